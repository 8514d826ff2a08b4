"""The per-rule conda environments agree with pyproject.toml and with what each stage imports.

Nobody runs ``--sdm conda`` on the development machines (no conda there), so drift between
envs/*.yaml, pyproject.toml and the code would only show up on a user's cluster. These tests
make the three agree:

* every env package is a pyproject dependency, in a range inside pyproject's and pinned to one
  major version (calendar-versioned packages, unbounded in pyproject, keep a lower bound only);
* every runtime dependency (except snakemake and its plugins, which drive the workflow rather
  than run inside a rule) is in some env;
* each env holds exactly the third-party packages its stage can import: the CLI's start-up
  imports (it imports every ``unetflow.commands.<stage>`` module) plus everything reachable
  from ``unetflow.commands.<stage>``, found statically (function-level imports included, so a
  code path the tests never run still finds its package);
* every rule's ``conda:`` names an existing env, the env of the stage its shell command runs
  as ``python -m unetflow <stage>`` (the envs do not install the package, so there is no
  ``unetflow`` script), and that command finds the package the way it would in a conda env.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tiny_workflow import REPO, check, prepare, snakemake

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli before 3.11
    import tomli as tomllib

ENVS = REPO / "envs"
RULES = REPO / "workflow" / "rules"
PACKAGE = "unetflow"
STAGES = ("ingest", "weights", "train", "predict", "tune", "evaluate", "export")
# Optional extras of pyproject.toml that a stage needs (its env carries them like dependencies).
STAGE_EXTRAS = ("export",)

CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib", "dask-core": "dask"}
IMPORT_TO_PYPI = {
    "bioimageio.core": "bioimageio.core",
    "bioimageio.spec": "bioimageio.spec",
    "skimage": "scikit-image",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "dask.distributed": "distributed",
}
# Packages a stage needs without importing them: {package: (why, the imported package that loads it)}.
RUNTIME_ONLY = {
    "imagecodecs": ("tifffile decodes compressed TIFF pages through it", "tifffile"),
    "onnxruntime": ("bioimageio.core's test_model runs the ONNX weights with it", "bioimageio-core"),
}
# Drive the workflow (the Snakemake process) rather than run inside a rule's job.
WORKFLOW_ONLY = re.compile(r"^snakemake($|-)")
# Imports whose loading at CLI start-up would make every stage (and `unetflow --help`) slow.
HEAVY_AT_START = ("torch", "distributed", "matplotlib")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def pyproject_dependencies() -> dict[str, SpecifierSet]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [text for extra in STAGE_EXTRAS for text in project["optional-dependencies"][extra]]
    requirements = [Requirement(text) for text in project["dependencies"] + extras]
    return {_normalise(req.name): req.specifier for req in requirements}


def conda_specifier(spec: str) -> SpecifierSet:
    """A conda MatchSpec version (``=3.11``, ``>=2,<3``, ``2.1.*``) as a PEP 440 specifier."""
    spec = spec.replace(" ", "")
    if not spec:
        return SpecifierSet()
    if spec.startswith("=") and not spec.startswith("=="):
        return SpecifierSet(f"=={spec[1:]}.*")
    if re.fullmatch(r"[\d.]+(\.\*)?", spec):
        return SpecifierSet(f"=={spec if spec.endswith('*') else spec + '.*'}")
    return SpecifierSet(spec)


def _bounds(specifier: SpecifierSet) -> tuple[Version | None, Version | None]:
    """(lowest allowed, exclusive upper bound) of a specifier built from >=, >, <, <=, ==X.*."""
    lower: Version | None = None
    upper: Version | None = None
    for spec in specifier:
        if spec.operator == "==" and spec.version.endswith(".*"):
            base = Version(spec.version[:-2])
            release = list(base.release)
            release[-1] += 1
            low, high = base, Version(".".join(map(str, release)))
        elif spec.operator in (">=", ">"):
            low, high = Version(spec.version), None
        elif spec.operator in ("<", "<="):
            low, high = None, Version(spec.version)
        else:
            raise AssertionError(f"unsupported version operator in {specifier}")
        if low is not None and (lower is None or low > lower):
            lower = low
        if high is not None and (upper is None or high < upper):
            upper = high
    return lower, upper


@cache
def env_files() -> dict[str, dict]:
    return {path.stem: yaml.safe_load(path.read_text()) for path in sorted(ENVS.glob("*.yaml"))}


def env_packages(env: dict) -> dict[str, SpecifierSet]:
    """PyPI name -> version range of an env's conda and pip packages (python and pip excluded)."""
    packages: dict[str, SpecifierSet] = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            for line in entry.get("pip", []):
                req = Requirement(line)
                packages[_normalise(req.name)] = req.specifier
            continue
        name, _, version = entry.partition(" ")
        if name in ("python", "pip"):
            continue
        packages[_normalise(CONDA_TO_PYPI.get(name, name))] = conda_specifier(version)
    return packages


# -- what each stage imports, found statically ------------------------------------------------------
def _module_path(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def _imports(module: str) -> tuple[frozenset[str], frozenset[str]]:
    """(imports run when ``module`` is imported, imports inside its functions) as module names."""
    path = _module_path(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    at_import: set[str] = set()
    in_functions: set[str] = set()

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module != "__future__":
                source = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    source = ".".join(parts + ([child.module] if child.module else []))
                names = [source] + [f"{source}.{a.name}" for a in child.names if _module_path(f"{source}.{a.name}")]
            (in_functions if inside else at_import).update(names)
            visit(child, inside)

    visit(ast.parse(path.read_text(), str(path)), False)
    return frozenset(at_import), frozenset(in_functions)


def third_party_imports(roots: list[str], *, deferred: bool) -> set[str]:
    """Third-party modules imported from ``roots`` and the package modules they reach.

    ``deferred=False`` follows only imports that run at import time (what ``import X`` costs);
    ``deferred=True`` also follows imports inside functions (what running the code may need).
    """
    seen: set[str] = set()
    found: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen or _module_path(module) is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parents are imported first
        at_import, in_functions = _imports(module)
        for name in at_import | (in_functions if deferred else frozenset()):
            if name.split(".")[0] == PACKAGE:
                todo.append(name)
            elif name.split(".")[0] not in sys.stdlib_module_names:
                found.add(name)
    return found


def _as_pypi(imports: set[str]) -> set[str]:
    names = set()
    for name in imports:
        top = name.split(".")[0]
        names.add(_normalise(IMPORT_TO_PYPI.get(name) or IMPORT_TO_PYPI.get(top, top)))
    return names


CLI_START = [f"{PACKAGE}.__main__"] + [f"{PACKAGE}.commands.{s}" for s in STAGES]


def stage_packages(stage: str) -> set[str]:
    start = third_party_imports(CLI_START, deferred=False)
    run = third_party_imports([f"{PACKAGE}.commands.{stage}"], deferred=True)
    return _as_pypi(start | run)


# -- tests -----------------------------------------------------------------------------------------
def test_one_env_per_stage() -> None:
    assert sorted(env_files()) == sorted(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_env_channels_and_python(stage: str) -> None:
    env = env_files()[stage]
    assert env["channels"][0] == "conda-forge", f"envs/{stage}.yaml: conda-forge must come first"
    assert "defaults" not in env["channels"], f"envs/{stage}.yaml: mixing defaults with conda-forge breaks solves"
    python = [e for e in env["dependencies"] if isinstance(e, str) and e.split(" ")[0] == "python"]
    assert python == ["python =3.11"], f"envs/{stage}.yaml: python must be pinned to 3.11, got {python}"


@pytest.mark.parametrize("stage", STAGES)
def test_env_packages_are_pyproject_dependencies_in_range(stage: str) -> None:
    declared = pyproject_dependencies()
    for name, spec in env_packages(env_files()[stage]).items():
        assert name in declared, f"envs/{stage}.yaml: {name} is not a dependency in pyproject.toml"
        low, high = _bounds(spec)
        py_low, py_high = _bounds(declared[name])
        where = f"envs/{stage}.yaml: {name} {spec} vs pyproject {declared[name]}"
        assert low is not None, f"{where}: needs a lower bound"
        assert py_low is None or low >= py_low, f"{where}: allows versions below pyproject's range"
        if py_high is not None:
            assert high is not None and high <= py_high, f"{where}: allows versions above pyproject's range"
            assert high <= Version(f"{low.major + 1}"), f"{where}: must be pinned to one major version"


def test_every_runtime_dependency_is_in_some_env() -> None:
    in_envs = set().union(*(env_packages(env) for env in env_files().values()))
    needed = {name for name in pyproject_dependencies() if not WORKFLOW_ONLY.match(name)}
    assert needed - in_envs == set(), "pyproject dependencies no env provides"


@pytest.mark.parametrize("stage", STAGES)
def test_env_holds_exactly_what_the_stage_imports(stage: str) -> None:
    packages = set(env_packages(env_files()[stage]))
    imported = stage_packages(stage)
    extra_allowed = {name for name, (_, loader) in RUNTIME_ONLY.items() if loader in imported}
    assert imported - packages == set(), f"envs/{stage}.yaml lacks packages the {stage} stage imports"
    unused = packages - imported - extra_allowed
    assert unused == set(), f"envs/{stage}.yaml has packages the {stage} stage never imports"
    assert extra_allowed <= packages, f"envs/{stage}.yaml lacks runtime-only packages: {RUNTIME_ONLY}"


def test_stage_imports_are_declared_dependencies() -> None:
    imported = set().union(*(stage_packages(stage) for stage in STAGES))
    assert imported - set(pyproject_dependencies()) == set(), "imported by the package but not in pyproject.toml"


def test_core_dependencies_are_what_the_package_imports() -> None:
    """``pip install unetflow`` pulls only what the library needs: every core dependency is
    imported by some stage (or loaded by one, RUNTIME_ONLY); tools like Snakemake are extras."""
    imported = set().union(*(stage_packages(stage) for stage in STAGES)) | set(RUNTIME_ONLY)
    assert set(pyproject_dependencies()) - imported == set(), "core dependencies the package never imports"


def _rules() -> list[tuple[Path, str, str]]:
    """(rule file, rule name, rule body) for every rule in workflow/rules/*.smk."""
    found = []
    for path in sorted(RULES.glob("*.smk")):
        blocks = re.split(r"^rule (\w+):\n", path.read_text(), flags=re.MULTILINE)
        found += [(path, name, body) for name, body in zip(blocks[1::2], blocks[2::2])]
    return found


def test_every_rule_runs_its_stage_in_its_stage_env() -> None:
    rules = _rules()
    assert rules, f"no rules found under {RULES}"
    problems, used = [], set()
    for path, name, body in rules:
        conda = re.search(r'^\s+conda:\s*\n?\s*"([^"]+)"', body, flags=re.MULTILINE)
        shell = re.search(r'^\s+shell:\s*\n?\s*"([^"]*)"', body, flags=re.MULTILINE)
        if shell is None:
            continue
        where = f"{path.relative_to(REPO)}: rule {name}"
        if conda is None:
            problems.append(f"{where} runs a shell command without a conda: environment")
            continue
        env = (path.parent / conda.group(1)).resolve()
        used.add(env.stem)
        stage = re.match(r"(?:\{UNETFLOW\}|python -m unetflow) (\w+) ", shell.group(1))
        if not env.is_file() or env.parent != ENVS:
            problems.append(f"{where}: conda: {conda.group(1)} is not a file in envs/")
        elif stage is None:
            problems.append(f"{where}: shell must start with `python -m unetflow <stage>` or `{{UNETFLOW}} <stage>`")
        elif env.stem != stage.group(1):
            problems.append(f"{where} runs stage {stage.group(1)} in envs/{env.name}")
    assert not problems, "\n".join(problems)
    assert set(env_files()) - used == set(), "env files no rule uses"


@cache
def modules_loaded_at_cli_start() -> frozenset[str]:
    """Top-level modules a fresh interpreter holds after building the CLI's parser (what start-up costs)."""
    code = (
        "import sys\nfrom unetflow.cli import build_parser\nbuild_parser()\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return frozenset(done.stdout.split())


def test_cli_start_does_not_import_heavy_packages() -> None:
    """Building the parser imports every stage module; heavy packages must wait for run()."""
    heavy = set(HEAVY_AT_START) & modules_loaded_at_cli_start()
    assert heavy == set(), "imported when `unetflow` starts (move these imports into the stage's run())"


def test_static_start_imports_agree_with_a_real_start() -> None:
    """The static analysis above sees what an actual start-up imports (guards the analyser)."""
    loaded = {_normalise(IMPORT_TO_PYPI.get(m, m)) for m in modules_loaded_at_cli_start()}
    static = _as_pypi(third_party_imports(CLI_START, deferred=False))
    declared = set(pyproject_dependencies())
    assert static <= loaded, "statically found start-up imports that a real start does not load"
    assert (loaded & declared) - static == set(), "a real start loads declared packages the analysis missed"


def test_jobs_find_the_package_without_it_being_installed(tmp_path: Path) -> None:
    """A job finds ``unetflow`` in a python that has the dependencies but not the package.

    That is a job under ``--sdm conda``: the env carries the dependencies only, and Snakemake
    deletes an inherited PYTHONPATH from a conda job's environment. The Snakefile's shell prefix
    must therefore put the checkout on the path inside the command. Simulated for real: jobs run
    a ``python`` that starts the venv's interpreter with ``-S`` (no site processing, so the
    editable install of unetflow is invisible) and sees the dependencies only through
    PYTHONPATH=site-packages, from a working directory outside the checkout.
    """
    import site

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    (bin_dir / "python").chmod(0o755)
    site_packages = os.pathsep.join(site.getsitepackages())
    probe = [str(bin_dir / "python"), "-c", "import unetflow"]
    alone = subprocess.run(probe, env={"PYTHONPATH": site_packages}, cwd=tmp_path, capture_output=True)
    assert alone.returncode != 0, "the simulation is broken: unetflow importable without the checkout"
    workdir = prepare(tmp_path / "work")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": site_packages}
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "1", "--until", "ingest_dataset"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (workdir / "results" / "tiny" / "data.zarr" / "zarr.json").is_file()
