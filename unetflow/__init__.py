"""unetflow: U-Net segmentation of biomedical images, from raw files to evaluated results."""

#: the one place the version lives: pyproject.toml reads it (setuptools dynamic version), the CLI
#: prints it (``unetflow --version``) and ingest records it, also where the package runs from a
#: checkout without being installed (rule jobs under ``--sdm conda``)
__version__ = "0.1.0"
