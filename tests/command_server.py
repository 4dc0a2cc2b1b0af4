"""`python -m MODULE ARGS` for the tests, each command in a process forked from this one, which has
imported the toolkit's dependencies already: the command runs as __main__ as it does for a user, and
the ~3 s that a fresh process spends importing jax, flax, orbax and grain is spent once.

One JSON list [module, *args] per line on stdin; one JSON object {"returncode", "stdout", "stderr"}
per line on stdout. Start it in the environment the commands should see, with the repository as the
working directory. Nothing here starts a jax backend or a Python thread, so each command's process
starts its own, as a fresh one would (XLA_FLAGS are read then); the one native thread, OpenBLAS's
(numpy's), is shut down by OpenBLAS before a fork and started again where it is next used.
"""
import importlib
import json
import os
import runpy
import signal
import sys
import tempfile

TIMEOUT_S = 600  # a command still running then is killed (SIGALRM; returncode -14)


def _command(module: str, args: list[str], out, err) -> None:
    """In the forked process: the command, with stdin empty and stdout and stderr into the files.
    Never returns: the process exits with the command's status, as `python -m` would."""
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    signal.alarm(TIMEOUT_S)
    sys.argv = [module, *args]  # runpy puts the module's file in argv[0]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    sys.exit(0)


def serve() -> None:
    sys.path[0] = os.getcwd()  # as `python -m` has it
    importlib.import_module("experiments.cli")  # jax, flax, optax, orbax, grain, absl and the toolkit

    for line in sys.stdin:
        module, *args = json.loads(line)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _command(module, args, out, err)
            _, status = os.waitpid(pid, 0)
            out.seek(0)
            err.seek(0)
            reply = {"returncode": os.waitstatus_to_exitcode(status),
                     "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace")}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    serve()
