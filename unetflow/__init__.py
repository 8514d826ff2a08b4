"""unetflow: U-Net segmentation of biomedical images, from raw files to evaluated results."""

__version__ = "0.1.0"
