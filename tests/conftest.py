"""Shared fixtures: an isolated kecil data folder, and tiny random models built once per session."""

from __future__ import annotations

import pytest

from tests.tiny_models import TinyModels

# Every test runs under the offline guard: a connection or name lookup that leaves the machine fails it.
pytest_plugins = ("tests.offline",)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA: skipped, with the reason, on a machine without it (CI)."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def kecil_home(tmp_path_factory):
    """A KECIL_HOME for the whole session, so the user's real ~/.cache/kecil is never touched.

    Session-wide rather than per test: the gemma3-270m built-in assembles a 253 MB file there
    on first use, and that should happen at most once per run.
    """
    home = tmp_path_factory.mktemp("kecil_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KECIL_HOME", str(home))
        yield home


@pytest.fixture(autouse=True)
def _isolated_kecil_home(kecil_home):
    """Every test sees the session's KECIL_HOME, even if an earlier test changed the variable."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KECIL_HOME", str(kecil_home))
        yield kecil_home


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory) -> TinyModels:
    """A factory: `tiny_hf_model("llama")` is the folder of a tiny random llama, built on first use.

    `tiny_hf_model.get(arch).parameters` is the parameter count of the module that was saved.
    """
    return TinyModels(tmp_path_factory.mktemp("tiny_hf_models"))


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway PostgreSQL cluster with pgvector on a Unix socket, one per session (a start
    is a few seconds), stopped and deleted at the end; skipped, with the reason, where no
    PostgreSQL with pgvector is installed (`make setup` installs one)."""
    from tests.postgres_cluster import find_binaries, start

    bin_dir, why = find_binaries()
    if bin_dir is None:
        pytest.skip(why)
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'kecil[postgres]'")
    cluster = start(bin_dir)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster) -> str:
    """A database in the session's cluster for knowledge bases (`…&kb=NAME` picks one)."""
    return postgres_cluster.create_database("kecil_tests")
