"""Test setup: 8 fake CPU devices, LLVM at -O0, and a persistent compilation cache for the
command-line subprocesses (set before JAX is imported), JAX's caches emptied after each test file,
commands run as a user runs them (forked from a process that has imported the toolkit), shared tiny
configurations, a tiny TFDS text dataset built locally and a GCS bucket served locally."""
import json
import os
import pathlib
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.metadata import version
from typing import NamedTuple

# The suite is compile-bound: XLA:CPU's LLVM backend at -O0 compiles its tiny programs in about half
# the time, and everything the tests check (the HLO passes: fusion, sharding, buffer assignment and
# memory, cost analysis) is the same at every level. XLA:CPU's legacy fusion emitters halve it again
# (a tiny two-step run: 8.7 -> 4.7 s); they fuse a little differently (the tiny train steps of gpt,
# switch, mod and tnl: a quarter fewer fusions, the same collectives, memory and FLOPs within 0.02%).
# Equivalences compare programs built alike; the commands users run keep XLA's defaults. The XLA of
# jaxlib 0.11 has no legacy emitters, and aborts every process on the flag.
LEGACY_EMITTERS = tuple(int(part) for part in version("jaxlib").split(".")[:2]) < (0, 11)
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0" + (" --xla_cpu_use_fusion_emitters=false" * LEGACY_EMITTERS)
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS} --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The command-line subprocesses (which inherit this environment) compile the same tiny programs
# many times: one shared persistent cache compiles each once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "scaling-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

# The test processes themselves keep to the in-memory cache, as the suite did before it ran in two
# workers: with the persistent cache on in them, a CI worker once aborted inside an 8-device step
# (jaxlib 0.10.2; not reproduced locally), and a crash in a subprocess is a failed test instead.
jax.config.update("jax_enable_compilation_cache", False)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from scaling.config import ModelConfig, TrainConfig  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """JAX's caches emptied after each test file. A test worker otherwise keeps every program it
    traced and compiled (1.05-1.12 million Python objects at the end of a run), and pytest's five
    garbage collections at exit outlast the 5 s that pytest-xdist (execnet) gives a worker to stop,
    after which the worker is sent a SIGINT (a KeyboardInterrupt in jax's gc callback, in the run's
    summary)."""
    yield
    jax.clear_caches()


def command_env(devices: int = 1) -> dict:
    """The environment of a command-line subprocess: this one's, on `devices` fake CPU devices."""
    xla_flags = f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"
    return {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_command_servers: dict[int, subprocess.Popen] = {}  # by number of devices; each test worker has its own


def run_command(module: str, *args: str, devices: int = 1) -> subprocess.CompletedProcess:
    """`python -m module args` on `devices` fake CPU devices, forked from a process that has imported
    the toolkit already (tests/command_server.py): stdout, stderr and exit status as a user sees them."""
    server = _command_servers.get(devices)
    if server is None:
        server = _command_servers[devices] = subprocess.Popen(
            [sys.executable, os.path.join(REPO, "tests", "command_server.py")], cwd=REPO, env=command_env(devices),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    server.stdin.write(json.dumps([module, *args]) + "\n")
    server.stdin.flush()
    reply = server.stdout.readline()
    if not reply:
        raise RuntimeError(f"tests/command_server.py ended (status {server.wait()}) running {module}")
    reply = json.loads(reply)
    return subprocess.CompletedProcess([sys.executable, "-m", module, *args], reply["returncode"], reply["stdout"],
                                       reply["stderr"])


@pytest.fixture(scope="session", autouse=True)
def stop_command_servers():
    yield
    for server in _command_servers.values():
        server.stdin.close()
        server.wait(timeout=60)


@pytest.fixture(scope="session")
def tiny_model() -> ModelConfig:
    """A model small enough to compile and train in a second, with heads divisible by 4."""
    return ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128, seq_len=32)


@pytest.fixture(scope="session")
def tiny_train() -> TrainConfig:
    """Eight steps of batch 8 on synthetic data, logging and evaluating every other step."""
    return TrainConfig(
        tokens=8 * 8 * 32, batch_size=8, learning_rate=1e-2, data="synthetic",
        eval_every=2, eval_batches=2, log_every=1, checkpoint_every=2,
    )


class TfdsText(NamedTuple):
    """A TFDS text dataset prepared on disk: pass `--data name --data_dir data_dir --text_key text_key`.

    `documents` holds the generated text per TFDS split, in generation order (TFDS stores examples
    shuffled).
    """

    name: str
    data_dir: str
    text_key: str
    documents: dict


TINY_TEXT_DOCUMENTS = {"train": 300, "validation": 60}
_WORDS = ("the model reads a token and predicts the next one while loss falls slowly over many steps "
          "data flows through windows of packed text caf\u00e9 na\u00efve \u00fcber \u4e2d\u6587 \u00bd "
          "gradient layer attention expert router").split()


def tiny_text_documents(split: str) -> list[str]:
    """Generated documents of one split: 1-4 lines of 3-15 words from a fixed word list (some
    non-ASCII), seeded by the split, so any process regenerates them."""
    rng = random.Random(split)
    lines = lambda: " ".join(rng.choices(_WORDS, k=rng.randint(3, 15))).capitalize() + "."
    return ["\n".join(lines() for _ in range(rng.randint(1, 4))) for _ in range(TINY_TEXT_DOCUMENTS[split])]


@pytest.fixture(scope="session")
def tfds_text(tmp_path_factory) -> TfdsText:
    """A tiny TFDS text dataset built locally, no network and no mocks: `tfds:scaling_tiny_text`, a
    tfds.core.GeneratorBasedBuilder over tiny_text_documents (features "text", "title" and "id"; splits
    train and validation), prepared as ArrayRecord into a temporary data_dir once per test session.

    Later tests may train on it (e.g. `--tokenizer spm:320`: SentencePiece accepts 306 <= N <= 370 on
    its training split) or launch other processes on it: a process without the builder class reads
    the prepared files from data_dir all the same.
    """
    tfds = pytest.importorskip("tensorflow_datasets")

    class ScalingTinyText(tfds.core.GeneratorBasedBuilder):
        """Generated short documents for the data pipeline's tests."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {"text": tfds.features.Text(), "title": tfds.features.Text(), "id": np.int64}
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            del dl_manager
            return {split: self._generate_examples(split) for split in TINY_TEXT_DOCUMENTS}

        def _generate_examples(self, split):
            for index, text in enumerate(tiny_text_documents(split)):
                yield index, {"text": text, "title": f"{split} {index}", "id": index}

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    ScalingTinyText(data_dir=data_dir, file_format="array_record").download_and_prepare()
    documents = {split: [text.encode() for text in tiny_text_documents(split)] for split in TINY_TEXT_DOCUMENTS}
    return TfdsText("tfds:scaling_tiny_text", data_dir, "text", documents)


EMULATOR_VARIABLES = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "CLOUD_STORAGE_EMULATOR_ENDPOINT")


class Bucket(NamedTuple):
    url: str  # gs://...
    log: pathlib.Path  # the server's log, a line per request


@pytest.fixture(scope="module")
def gcs_bucket(tmp_path_factory) -> Bucket:
    """A bucket on a Google Cloud Storage server run locally (tests/gcs_server.py, in memory): gs:// paths
    go through the clients a pod uses, over HTTP, offline. etils.epath reaches it with gcsfs
    (STORAGE_EMULATOR_HOST), orbax's checkpoints with tensorstore (TENSORSTORE_GCS_HTTP_URL, with the
    token tensorstore takes in tests), and TFDS's ArrayRecord files with ArrayRecord's own client
    (CLOUD_STORAGE_EMULATOR_ENDPOINT). Command-line subprocesses inherit the variables."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("gcs") / "requests.log"
    with open(log, "w") as output:
        server = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "gcs_server.py"),
                                   str(port), "scaling-tests"], stdout=output, stderr=output)
    try:
        _wait_until_serving(f"{url}/storage/v1/b/scaling-tests")
        with pytest.MonkeyPatch.context() as patch:
            for name in EMULATOR_VARIABLES:
                patch.setenv(name, url)
            patch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "local")
            _forget_gcs_clients()
            yield Bucket("gs://scaling-tests", log)
    finally:
        server.terminate()
        server.wait(timeout=30)
        _forget_gcs_clients()


def _wait_until_serving(url: str, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def _forget_gcs_clients() -> None:
    """Drops the gcsfs clients etils and fsspec keep, which hold the endpoint they were made with."""
    import gcsfs
    from etils.epath import backend

    gcsfs.GCSFileSystem.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()
