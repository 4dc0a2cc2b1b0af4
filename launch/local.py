"""N processes of one command on this host, joined into one CPU job (for testing multi-process code).

    python -m launch.local --num_processes 2 --devices_per_process 4 -- \\
        python -m experiments.train --data synthetic --workdir runs/multi

Each process gets SCALING_COORDINATOR, SCALING_NUM_PROCESSES, SCALING_PROCESS_ID and
SCALING_CPU_COLLECTIVES=gloo (read by scaling/distributed.py) and `devices_per_process` fake CPU
devices. Output lines are streamed as printed, prefixed with `[i]`. When a process fails the others
are stopped, and the launcher exits with the first failure's status (0 when all succeed).
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from launch import common

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
GRACE_S = 10.0


def free_port() -> int:
    """A TCP port on localhost that is free now (the coordinator binds it moments later)."""
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def process_env(base: dict, coordinator: str, num_processes: int, process_id: int, devices: int) -> dict:
    """`base` plus the multi-process contract of scaling/distributed.py and `devices` CPU devices."""
    xla_flags = [f for f in base.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    return {
        **base,
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",  # stream output as it is printed, not when a pipe buffer fills
        "XLA_FLAGS": " ".join([*xla_flags, f"{DEVICE_COUNT_FLAG}={devices}"]),
        "SCALING_COORDINATOR": coordinator,
        "SCALING_NUM_PROCESSES": str(num_processes),
        "SCALING_PROCESS_ID": str(process_id),
        "SCALING_CPU_COLLECTIVES": "gloo",
    }


def pump(stream, sink, prefix: str, lock: threading.Lock) -> None:
    """Copies `stream` to `sink` line by line, each line prefixed."""
    for line in iter(stream.readline, b""):
        with lock:
            sink.write(prefix + line.decode(errors="replace"))
            sink.flush()
    stream.close()


def exit_status(returncode: int) -> int:
    """A Popen return code as a shell exit status (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def supervise(procs: list[subprocess.Popen]) -> int:
    """Waits for all processes; on the first failure stops the rest (SIGTERM, SIGKILL after a grace period).

    Returns the first failure's exit status, or 0. JAX handles SIGTERM as a preemption notice, so a
    process that keeps running after GRACE_S is killed.
    """
    status, kill_at = 0, None
    running = dict(enumerate(procs))
    while running:
        for i, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[i]
            if proc.returncode and not status:
                status = exit_status(proc.returncode)
                print(f"[launch] process {i} exited with status {status}; stopping the others", file=sys.stderr)
                for other in running.values():
                    other.terminate()
                kill_at = time.monotonic() + GRACE_S
        if kill_at is not None and time.monotonic() > kill_at:
            for other in running.values():
                other.kill()
        time.sleep(0.05)
    return status


def run(argv: list[str]) -> int:
    parser = common.make_parser("launch.local", __doc__)
    parser.add_argument("--num_processes", type=common.positive_int, default=2, help="Processes to start.")
    parser.add_argument(
        "--devices_per_process", type=common.positive_int, default=1, help="Fake CPU devices per process."
    )
    args, command = common.parse(parser, argv)
    coordinator = f"localhost:{free_port()}"
    lock = threading.Lock()
    procs, pumps = [], []
    for i in range(args.num_processes):
        env = process_env(dict(os.environ), coordinator, args.num_processes, i, args.devices_per_process)
        try:
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as error:  # the same command for every process: only the first can fail here
            raise common.UsageError("command after --", f"cannot start {command[0]!r} ({error.strerror}); fix it")
        procs.append(proc)
        for stream, sink in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
            pumps.append(threading.Thread(target=pump, args=(stream, sink, f"[{i}] ", lock), daemon=True))
            pumps[-1].start()
    try:
        status = supervise(procs)
    except KeyboardInterrupt:
        for proc in procs:
            proc.kill()
        status = 128 + signal.SIGINT
    for thread in pumps:
        thread.join()
    return status


if __name__ == "__main__":
    common.main(run)
