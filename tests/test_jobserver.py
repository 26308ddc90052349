"""The job server of local runs (geopeft.jobserver): a forked job behaves as its own process would.

The fast tests serve a fake command line (no torch); the slow ones serve the real ``geopeft`` and
compare a trained model with the same job run as a fresh process, bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import backbone_cfg
from safetensors.torch import load_file

from geopeft import jobserver, process, wire
from geopeft.tracking import init_experiment

# A fake `geopeft` for the server: what the child sees, and how it stops.
FAKE = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from geopeft.jobserver import serve

    def run(argv):
        if argv[1] == "echo":
            print("cwd", os.getcwd())
            print("env", os.environ.get("FOO"))
            print("pid", os.getpid())
            print("started", os.environ.get("GEOPEFT_PROCESS_START"))
            print("server-env", os.environ.get("GEOPEFT_JOBSERVER"))
            import tempfile
            print("tmp", tempfile.gettempdir())
            print("oops", file=sys.stderr)
            return int(argv[2])
        if argv[1] == "wait":
            marker = Path(argv[2])
            def term(signum, frame):
                marker.write_text(str(signum))
                sys.exit(75)
            signal.signal(signal.SIGTERM, term)
            Path(argv[3]).write_text(str(os.getpid()))
            time.sleep(60)
            return 0
        raise RuntimeError("boom")

    parent = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "-" else None
    warm = sys.argv[3:]  # modules to import first (a slow one stands for torch)
    import tempfile
    tempfile.gettempdir()  # cached in the server, as a library's import may do
    if os.environ.get("FAKE_OTHER_USER"):  # the server runs as another user than its clients
        real_uid = os.getuid
        os.getuid = lambda: real_uid() + 1
    kw = {}
    if os.environ.get("FAKE_REQUEST_TIMEOUT"):
        kw["request_timeout_s"] = float(os.environ["FAKE_REQUEST_TIMEOUT"])
    serve(sys.argv[1], parent, run=run, warm=warm, poll_s=0.05, **kw)
""")

CLIENT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from geopeft import jobserver, process, wire
    if len(sys.argv) > 1 and sys.argv[1] == "--other-copy":
        jobserver.client.identity = lambda: {"python": "/elsewhere/python", "prefix": "/elsewhere",
                                       "package": "/elsewhere/geopeft"}
        sys.argv.pop(1)
    process.note_snakemake()  # as geopeft's main does first
    status = jobserver.run_remote(sys.argv[1], sys.argv[1:])
    if status is None:
        print("IN-PROCESS", flush=True)
        status = 0
        if sys.argv[2] == "wait":  # trains in this process, as `geopeft train` does
            from geopeft.train.resume import Preempted, stop_when_snakemake_is_gone
            try:
                stop_when_snakemake_is_gone(poll_s=0.05)
            except Preempted as err:
                print("preempted:", err, flush=True)
                sys.exit(75)
            Path(sys.argv[4]).write_text(str(os.getpid()))
            time.sleep(60)
    sys.exit(status)
""")


@pytest.fixture
def server(tmp_path):
    """A fake job server on a socket in a private folder; yields (socket, process)."""
    folder = tmp_path / "srv"
    folder.mkdir(mode=0o700)
    sock = folder / "sock"
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed with the fixture
    proc = subprocess.Popen([sys.executable, "-c", FAKE, str(sock)], stdout=log,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    end = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < end, (tmp_path / "server.log").read_text()
        time.sleep(0.02)
    yield sock, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)
    log.close()


def client(sock: Path, tmp_path: Path, *argv: str, **env: str) -> subprocess.Popen:
    out = open(tmp_path / "client.out", "w")  # noqa: SIM115 - the client's stdout, like a job log
    e = dict(os.environ, GEOPEFT_JOBSERVER=str(sock), **env)
    cwd = tmp_path / "work"
    cwd.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", CLIENT, *argv], cwd=cwd, env=e, stdout=out,
                            stderr=subprocess.STDOUT)


def wait_for(path: Path, timeout: float = 30) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} never written")


def test_a_job_runs_in_a_child_with_the_clients_streams_folder_environment_and_status(server, tmp_path):
    sock, _ = server
    (tmp_path / "jobtmp").mkdir()
    c = client(sock, tmp_path, "train", "echo", "3", FOO="bar", TMPDIR=str(tmp_path / "jobtmp"))
    assert c.wait(timeout=30) == 3  # the child's exit status is the job's
    lines = (tmp_path / "client.out").read_text().splitlines()
    out = dict(line.split(" ", 1) for line in lines if " " in line)
    assert out["cwd"] == str(tmp_path / "work")
    assert out["env"] == "bar"
    assert int(out["pid"]) != c.pid  # it ran in the server's child, not in the client ...
    assert "IN-PROCESS" not in lines and "oops" in lines  # ... writing to the client's stdout/err
    assert out["tmp"] == str(tmp_path / "jobtmp")  # the job's TMPDIR, set by Snakemake per job
    assert out["server-env"] == "None"  # what the job starts (torchrun workers) starts afresh
    started = float(out["started"])  # start-up counts from the client's start
    assert time.time() - 60 < started <= time.time()


def test_an_uncaught_error_in_the_job_is_a_traceback_and_status_1(server, tmp_path):
    sock, _ = server
    c = client(sock, tmp_path, "evaluate", "crash")
    assert c.wait(timeout=30) == 1
    text = (tmp_path / "client.out").read_text()
    assert "RuntimeError: boom" in text and "Traceback" in text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_client_reaches_the_job(server, tmp_path, sig):
    sock, _ = server
    marker, pidfile = tmp_path / "stopped", tmp_path / "pid"
    c = client(sock, tmp_path, "train", "wait", str(marker), str(pidfile))
    wait_for(pidfile)
    c.send_signal(sig)
    if sig == signal.SIGINT:  # as in a fresh process: KeyboardInterrupt, status 130
        assert c.wait(timeout=30) == 128 + signal.SIGINT
        assert not marker.exists()
        assert "KeyboardInterrupt" in (tmp_path / "client.out").read_text()
    else:
        assert c.wait(timeout=30) == 75  # the job's own exit status (preempted)
        assert wait_for(marker) == str(int(signal.SIGTERM))


def test_a_killed_client_stops_its_job(server, tmp_path):
    """SIGKILL of a job (Snakemake killed with it) must not leave its trainer running."""
    sock, _ = server
    marker, pidfile = tmp_path / "stopped", tmp_path / "pid"
    c = client(sock, tmp_path, "train", "wait", str(marker), str(pidfile))
    child = int(wait_for(pidfile))
    c.kill()
    c.wait(timeout=30)
    assert wait_for(marker) == str(int(signal.SIGTERM))  # stopped as on preemption
    end = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and "Z" not in Path(f"/proc/{child}/stat").read_text().split()[2]:
        assert time.monotonic() < end, "the job outlived its client"
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_a_client_stopped_while_the_server_still_loads_leaves_no_job(tmp_path):
    """SIGTERM to a client whose job the server has not forked yet (it is still importing):
    the job must not start and train on unattended."""
    (tmp_path / "slowmod.py").write_text("import time\ntime.sleep(2)\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    sock, srv = start_server(tmp_path, "-", "slowmod", env=env)
    try:
        marker, pidfile = tmp_path / "stopped", tmp_path / "pid"
        c = client(sock, tmp_path, "train", "wait", str(marker), str(pidfile))
        time.sleep(0.5)  # connected, waiting for the server to finish loading
        c.terminate()
        assert c.wait(timeout=30) in (75, 128 + signal.SIGTERM)
        time.sleep(2.5)  # the server has loaded and forked by now
        for child in _children(srv.pid):
            assert "Z" in Path(f"/proc/{child}/stat").read_text().split()[2], "a job trains on"
    finally:
        srv.terminate()
        srv.wait(timeout=30)


def test_a_job_whose_server_dies_is_stopped_by_its_client(server, tmp_path):
    sock, proc = server
    marker, pidfile = tmp_path / "stopped", tmp_path / "pid"
    c = client(sock, tmp_path, "train", "wait", str(marker), str(pidfile))
    wait_for(pidfile)
    proc.kill()  # the server crashes (or is killed) while the job runs
    proc.wait()
    assert c.wait(timeout=60) == 1
    assert wait_for(marker) == str(int(signal.SIGTERM))  # the job was told to stop, state saved
    assert "lost the job" in (tmp_path / "client.out").read_text()


def test_another_python_or_copy_of_geopeft_runs_in_its_own_process(server, tmp_path):
    sock, _ = server
    c = client(sock, tmp_path, "--other-copy", "train", "echo", "0")
    assert c.wait(timeout=30) == 0
    text = (tmp_path / "client.out").read_text()
    assert "the client runs /elsewhere/python" in text and "running in this process" in text
    assert "IN-PROCESS" in text


def test_no_server_or_a_light_command_runs_in_its_own_process(tmp_path):
    c = client(tmp_path / "missing.sock", tmp_path, "train", "echo", "0")
    assert c.wait(timeout=30) == 0
    text = (tmp_path / "client.out").read_text()
    assert "not usable" in text and "IN-PROCESS" in text
    assert jobserver.run_remote("table", ["table"]) is None  # light commands never go through it


def start_server(tmp_path: Path, *args: str, env: dict | None = None,
                 log: Path | None = None) -> tuple[Path, subprocess.Popen]:
    """A fake job server (``FAKE`` with ``args``: parent PID or "-", modules to preload) on a
    socket in a new private folder, its output in ``log`` if given; returns once the socket
    exists."""
    folder = tmp_path / "srv"
    folder.mkdir(mode=0o700)
    sock = folder / "sock"
    out = open(log, "w") if log else None  # noqa: SIM115 - the server's, closed by the OS with it
    proc = subprocess.Popen([sys.executable, "-c", FAKE, str(sock), *args], env=env, stdout=out,
                            stderr=subprocess.STDOUT if out else None)
    if out:
        out.close()
    end = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < end
        time.sleep(0.02)
    return sock, proc


def test_jobs_stop_when_snakemake_is_killed(tmp_path):
    """Snakemake SIGKILLed leaves its jobs' clients running; their trainers must not go on."""
    parent = subprocess.Popen(["sleep", "60"])
    sock, proc = start_server(tmp_path, str(parent.pid))
    marker, pidfile = tmp_path / "stopped", tmp_path / "pid"
    c = client(sock, tmp_path, "train", "wait", str(marker), str(pidfile))
    wait_for(pidfile)
    time.sleep(0.3)
    assert not marker.exists()  # runs while Snakemake lives
    parent.kill()
    parent.wait()
    assert c.wait(timeout=30) == 75  # stopped as on preemption, its status back to the client
    assert wait_for(marker) == str(int(signal.SIGTERM))
    assert proc.wait(timeout=30) == 0


def test_the_server_stops_when_snakemake_is_gone_and_cleans_up(tmp_path):
    parent = subprocess.Popen(["sleep", "60"])
    sock, proc = start_server(tmp_path, str(parent.pid))
    time.sleep(0.3)
    assert proc.poll() is None  # serves while its parent lives
    parent.kill()
    parent.wait()
    assert proc.wait(timeout=30) == 0
    assert not sock.parent.exists()  # socket and private folder removed


def _connect(sock: Path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(str(sock))
    conn.settimeout(10)
    return conn


def test_a_connection_from_another_user_is_refused_before_its_request_is_read(tmp_path):
    """In a shared folder another user's connection is refused on its credentials alone: the
    answer comes although it sends nothing (before: the server waited 30 s for its request)."""
    sock, srv = start_server(tmp_path, "-", env=dict(os.environ, FAKE_OTHER_USER="1"))
    me = os.getuid()
    refusal = f"client uid {me} is not the server's {me + 1}"
    try:
        with _connect(sock) as peer:
            assert wire.recv(peer) == {"refused": refusal}
        c = client(sock, tmp_path, "train", "echo", "0")  # a job runs in its own process
        assert c.wait(timeout=60) == 0
        text = (tmp_path / "client.out").read_text()
        assert refusal in text and "IN-PROCESS" in text
    finally:
        srv.terminate()
        srv.wait(timeout=30)


def test_a_silent_connection_does_not_stall_the_next_client(tmp_path):
    """A peer that connects and sends nothing held the whole server until its read timed out
    (29 s); the next job is served while it still hangs."""
    sock, srv = start_server(tmp_path, "-", env=dict(os.environ, FAKE_REQUEST_TIMEOUT="60"))
    try:
        with _connect(sock) as silent:
            c = client(sock, tmp_path, "train", "echo", "0")
            assert c.wait(timeout=30) == 0
            assert "IN-PROCESS" not in (tmp_path / "client.out").read_text()  # the server ran it
            silent.setblocking(False)
            with pytest.raises(BlockingIOError):  # and the silent one is still open, unanswered
                silent.recv(1)
    finally:
        srv.terminate()
        srv.wait(timeout=30)


def _peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def test_an_oversized_or_silent_request_is_dropped_without_reading_it(tmp_path):
    """A header declaring 1 GiB is refused on the header alone, naming the limit (before: the
    server read the body as it came, 165 MB for 1 GB); a silent connection is closed after the
    request timeout."""
    log = tmp_path / "server.log"
    sock, srv = start_server(tmp_path, "-", env=dict(os.environ, FAKE_REQUEST_TIMEOUT="0.5"), log=log)
    try:
        before = _peak_rss_kb(srv.pid)
        with _connect(sock) as big:
            with pytest.raises((BrokenPipeError, ConnectionResetError)):  # closed on the header
                big.sendall(struct.pack("!I", 2**30) + bytes(32 * 2**20))
        assert _peak_rss_kb(srv.pid) - before < 4 * 1024  # the 32 MiB sent were never read
        with _connect(sock) as silent:
            assert silent.recv(1) == b""  # closed unanswered once the request timeout passed
        text = log.read_text()
        assert (f"a message of {2**30} bytes is over the limit of {wire.MAX_MESSAGE_BYTES} bytes "
                "(geopeft.wire.MAX_MESSAGE_BYTES)") in text
        assert "no request within 0.5 s" in text
    finally:
        srv.terminate()
        srv.wait(timeout=30)


# A stand-in for Snakemake: it starts the job server as `onstart` does (jobserver.start, on the
# fake `geopeft` of PATH), writes the server's PID and socket, then starts one job through a shell that
# records the job's exit status.
SNAKEMAKE = textwrap.dedent("""
    import subprocess, sys, time
    from pathlib import Path
    from geopeft import jobserver, process, wire
    folder = Path(sys.argv[1])
    handle = jobserver.start(folder / "server.log")
    (folder / "server").write_text(f"{handle.process.pid} {handle.socket}")
    subprocess.Popen(["bash", "-c", sys.argv[2] + f"; echo $? > {folder / 'status'}"])
    time.sleep(120)
""")


def _queued(sock: str) -> int:
    """Connections waiting on the listening socket ``sock`` for the server to accept them."""
    lines = Path("/proc/net/unix").read_text().splitlines()
    return sum(line.endswith(f" {sock}") for line in lines) - 1


@pytest.mark.parametrize("when", ["waiting", "before-start"])
def test_a_job_whose_snakemake_is_killed_during_the_warm_up_stops_at_once(tmp_path, when):
    """Snakemake SIGKILLed while the job server still loads (torch): a job whose client waits
    for it (or that starts only then) stops within seconds; no trainer starts, in the server or
    in the job's own process (before: the client waited for the server, then trained on as an
    orphan and the rerun met "another trainer")."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (tmp_path / "slowmod.py").write_text(  # stands for the imports: done once `release` exists
        "from pathlib import Path\nimport time\n"
        f"while not Path({str(tmp_path / 'release')!r}).exists():\n    time.sleep(0.02)\n")
    geopeft = bindir / "geopeft"  # `geopeft jobserver --socket S --parent P` -> FAKE S P slowmod
    geopeft.write_text(f"#!{sys.executable}\nimport sys\n"
                       "sys.argv = [sys.argv[0], sys.argv[3], sys.argv[5], 'slowmod']\n" + FAKE)
    snakemake = bindir / "snakemake"
    snakemake.write_text(f"#!{sys.executable}\n" + SNAKEMAKE)
    for exe in (geopeft, snakemake):
        exe.chmod(0o755)
    marker, pidfile, out = tmp_path / "stopped", tmp_path / "trainer.pid", tmp_path / "client.out"
    gate = f"while [ ! -e {tmp_path / 'go'} ]; do sleep 0.02; done; " if when == "before-start" else ""
    job = (f"{gate}{sys.executable} -c {shlex.quote(CLIENT)} train wait {marker} {pidfile} "
           f"> {out} 2>&1")
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    env.pop(jobserver.ENV, None)
    snake = subprocess.Popen([str(snakemake), str(tmp_path), job], env=env, start_new_session=True)
    server = None
    try:
        pid, sock = wait_for(tmp_path / "server").split()
        server = int(pid)
        if when == "waiting":  # the job's client has sent its request and waits for an answer
            end = time.monotonic() + 30
            while _queued(sock) < 1:
                assert time.monotonic() < end, "the client never connected"
                time.sleep(0.02)
        snake.kill()
        snake.wait()
        killed = time.monotonic()
        (tmp_path / "go").touch()
        status = wait_for(tmp_path / "status", timeout=10).strip()
        assert time.monotonic() - killed < 5  # stopped at once, not after the warm-up
        text = out.read_text()
        assert status == str(128 + signal.SIGTERM), text  # as if Snakemake had sent SIGTERM
        assert f"Snakemake (pid {snake.pid}) is gone: not running this job" in text
        (tmp_path / "release").touch()  # the server finishes loading, sees Snakemake gone ...
        alive = process.watch_process(server)
        end = time.monotonic() + 30
        while alive():
            assert time.monotonic() < end, "the server outlived Snakemake"
            time.sleep(0.02)
        assert not pidfile.exists()  # ... and no trainer ever ran, there or in the client
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(snake.pid, signal.SIGKILL)
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGKILL)


def test_start_and_stop_set_and_clear_the_variable_jobs_inherit(tmp_path, monkeypatch):
    """`onstart` starts the server on the geopeft of PATH, in a private folder; `onsuccess` stops it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "geopeft"  # records its command line, then serves like the real one
    record = f"open({str(tmp_path / 'argv')!r}, 'w').write(' '.join(sys.argv))"
    fake.write_text(f"#!{sys.executable}\nimport sys\n{record}\nsys.argv = [sys.argv[0], sys.argv[3]]\n"
                    + FAKE)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv(jobserver.ENV, raising=False)
    monkeypatch.delenv(process.SNAKEMAKE_ENV, raising=False)
    handle = jobserver.start(tmp_path / "logs" / "jobserver.log")
    assert handle is not None and os.environ[jobserver.ENV] == handle.socket
    # who the jobs' Snakemake is, for a job that starts once it is gone
    assert os.environ[process.SNAKEMAKE_ENV] == process.process_key(os.getpid())
    folder = Path(handle.socket).parent
    assert folder.stat().st_mode & 0o777 == 0o700
    argv = wait_for(tmp_path / "argv").split()
    assert argv[1:4] == ["jobserver", "--socket", handle.socket]
    assert argv[5] == str(os.getpid())  # stops when this process (Snakemake) is gone
    jobserver.stop(handle)
    assert handle.process.poll() is not None
    assert jobserver.ENV not in os.environ and not folder.exists()
    assert process.SNAKEMAKE_ENV not in os.environ


# ------------------------------------------------------------------ the real geopeft, slow


def _spec(name: str) -> dict:
    train = {"epochs": 2, "batch_size": 8, "lr": 0.003, "weight_decay": 0.05,
             "warmup_epochs": 1, "augment": True, "device": "cpu", "amp": True,
             "eval_batch_size": 64, "encoder_lr_factor": 1.0, "checkpoint_every": 1,
             "checkpoint_minutes": 0, "loss": "ce"}
    row = {"name": name, "strategy": "lora", "method": "lora", "label_fraction": 1.0, "seed": 5,
           "dataset": "eurosat_rgb", "train": train,
           "lora": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1,
                    "target_modules": ["q", "v"]}}
    return {"study": "jobserver", "data": {"dataset": "eurosat_rgb", "bands": ["B04", "B03", "B02"],
            "source": "synthetic"}, "backbone": backbone_cfg(), "row": row, "threads": 1}


@pytest.mark.slow
def test_a_job_through_the_server_equals_a_fresh_process_bitwise(tmp_path, rgb_store):
    exp = tmp_path / "experiment.json"
    init_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}", "jobserver", str(tmp_path / "art"), exp)
    folder = tmp_path / "srv"
    folder.mkdir(mode=0o700)
    sock = folder / "sock"
    srv = subprocess.Popen([sys.executable, "-m", "geopeft.cli", "jobserver", "--socket", str(sock)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=dict(os.environ, **jobserver.SERVER_ENV), start_new_session=True)
    try:
        outs = {}
        for name, env in (("fresh", {}), ("served", {jobserver.ENV: str(sock)})):
            out = tmp_path / name
            cmd = [sys.executable, "-m", "geopeft.cli", "train", "--spec", json.dumps(_spec("r")),
                   "--store", str(rgb_store), "--experiment", str(exp), "--out", str(out / "model"),
                   "--state", str(out / "state"), "--gpus", "0"]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                               env=dict(os.environ, **env))
            assert r.returncode == 0, r.stderr[-3000:]
            assert "running in this process" not in r.stderr
            outs[name] = out / "model"
        for name, env in (("fresh", {}), ("served", {jobserver.ENV: str(sock)})):  # evaluate too
            m = outs[name]
            cmd = [sys.executable, "-m", "geopeft.cli", "evaluate", "--model", str(m), "--store",
                   str(rgb_store), "--metrics", str(m.parent / "metrics.json"), "--confusion",
                   str(m.parent / "confusion.csv"), "--gpus", "0"]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                               env=dict(os.environ, **env))
            assert r.returncode == 0, r.stderr[-3000:]
        assert (tmp_path / "fresh" / "metrics.json").read_text() == \
            (tmp_path / "served" / "metrics.json").read_text()
        assert (tmp_path / "fresh" / "confusion.csv").read_text() == \
            (tmp_path / "served" / "confusion.csv").read_text()
        a, b = (load_file(outs[n] / "trainable.safetensors") for n in ("fresh", "served"))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
        ra, rb = (json.loads((outs[n] / "run.json").read_text()) for n in ("fresh", "served"))
        assert ra["history"] == rb["history"]
        assert 0 < rb["startup_s"] < ra["startup_s"]  # served: no imports before the first step
        for r in (ra, rb):  # the start-up by stage (bench/startup.py): cumulative, in order
            st = r["startup_stages"]
            assert set(st) == {"imports", "data", "model", "mlflow_run", "first_step"}
            assert 0 < st["imports"] <= st["data"] <= st["model"] <= st["mlflow_run"] \
                <= st["first_step"] == r["startup_s"]
        assert rb["startup_stages"]["imports"] < ra["startup_stages"]["imports"]
    finally:
        srv.terminate()
        log = srv.communicate(timeout=60)[0]
    assert log.count("ended with status 0") == 2, log  # train and evaluate were served


def test_watch_process_sees_exit_zombies_and_recycled_pids(monkeypatch):
    """One liveness check for the server's parent and a job's Snakemake: a process that exited
    (even one not reaped yet) is gone, and so is a PID that now names another process."""
    from geopeft import process

    child = subprocess.Popen(["sleep", "60"])
    alive = process.watch_process(child.pid)
    assert alive()
    child.kill()
    deadline = time.monotonic() + 10
    while (process.proc_stat(child.pid) or ["Z"])[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive()  # a zombie: killed, its parent (this test) has not reaped it yet
    child.wait()
    assert not alive()
    assert not process.watch_process(child.pid)()  # no such process when the watch starts

    me = process.watch_process(os.getpid())
    assert me()
    real = process.proc_stat
    recycled = lambda pid="self": [*real(pid)[:19], "1", *real(pid)[20:]]  # noqa: E731
    monkeypatch.setattr(process, "proc_stat", recycled)
    assert not me()  # same PID, another start time: another process
