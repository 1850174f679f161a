#!/usr/bin/env python3
"""How long slow and idle clients keep connections to `loopai serve` open, and whether
POST /execute still answers while they hold connections.

Bounded in count and time, loopback only. Usage:

    benches/conn/slow_clients.py LOOPAI_BINARY [--idle 200] [--slow 50] [--flood 1100]
        [--bound 90] [-- extra `loopai serve` flags]

1. idle: N sockets connect and send nothing; reports when the server closed them.
2. slowloris: M sockets send a request line, then one header line every 2 s.
3. flood: the server runs with `ulimit -n 1024`; F idle connections are opened, then
   POST /execute is tried on a new connection (5 s timeout), again every second until it
   answers 200 or --bound passes.
Each phase stops at --bound seconds; sockets still open then are reported as such.
"""
import argparse
import json
import os
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def start_server(binary, data_dir, extra, nofile=None):
    def limit():
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    proc = subprocess.Popen(
        [binary, "serve", "--data-dir", data_dir, "--task", "spam", "--port", "0", *extra],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, preexec_fn=limit,
        env={**os.environ, "LOOPAI_LOG": "info"},
    )
    addr = None
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if "listening on http://" in line:
            addr = line.split("listening on http://")[1].split()[0]
        if addr and "ready" in line:
            break
    if not addr:
        proc.kill()
        sys.exit("the server did not start")
    host, port = addr.rsplit(":", 1)
    return proc, (host, int(port))


def stop_server(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def watch_until_closed(socks, bound, trickle=None):
    """Seconds after which each socket was closed by the server (None: still open)."""
    start = time.time()
    closed = {}
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    next_trickle = start + 2
    line = 0
    while len(closed) < len(socks) and time.time() - start < bound:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except (ConnectionResetError, OSError):
                data = b""
            if not data:
                closed[s] = time.time() - start
                sel.unregister(s)
        if trickle and time.time() >= next_trickle:
            line += 1
            for s in socks:
                if s not in closed:
                    try:
                        s.send(b"x-slow-%d: 1\r\n" % line)
                    except OSError:
                        pass
            next_trickle += 2
    return [closed.get(s) for s in socks]


def summary(times, bound):
    done = [t for t in times if t is not None]
    still = len(times) - len(done)
    if not done:
        return f"{len(times)} sockets: all still open after {bound} s"
    return (f"{len(times)} sockets: {len(done)} closed by the server (median {statistics.median(done):.1f} s, "
            f"max {max(done):.1f} s), {still} still open after {bound} s")


def connect_many(addr, n):
    socks = []
    for _ in range(n):
        s = socket.create_connection(addr, timeout=5)
        socks.append(s)
    return socks


def execute(addr):
    body = json.dumps({"input": {"text": "win a prize"}}).encode()
    try:
        s = socket.create_connection(addr, timeout=5)
        s.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        start = time.time()
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        return data.split(b"\r\n", 1)[0].decode(), time.time() - start
    except OSError as e:
        return f"failed: {e}", None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("binary")
    p.add_argument("--idle", type=int, default=200)
    p.add_argument("--slow", type=int, default=50)
    p.add_argument("--flood", type=int, default=1100)
    p.add_argument("--bound", type=float, default=90)
    p.add_argument("extra", nargs="*")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    work = tempfile.mkdtemp()
    try:
        data = os.path.join(work, "data")
        subprocess.run([a.binary, "artifacts", "install", "--data-dir", data, "--task", "spam",
                        "--spec", os.path.join(REPO, "examples/spam/spec.json"),
                        os.path.join(REPO, "examples/spam/program.json")],
                       check=True, stdout=subprocess.DEVNULL)
        proc, addr = start_server(a.binary, data, a.extra)
        try:
            idle = connect_many(addr, a.idle)
            print("idle:     ", summary(watch_until_closed(idle, a.bound), a.bound), flush=True)
            for s in idle:
                s.close()
            slow = connect_many(addr, a.slow)
            for s in slow:
                s.sendall(b"POST /execute HTTP/1.1\r\nHost: x\r\n")
            print("slowloris:", summary(watch_until_closed(slow, a.bound, trickle=True), a.bound), flush=True)
            for s in slow:
                s.close()
        finally:
            stop_server(proc)
        proc, addr = start_server(a.binary, data, a.extra, nofile=1024)
        try:
            flood = []
            for _ in range(a.flood):
                try:
                    flood.append(socket.create_connection(addr, timeout=5))
                except OSError:
                    break
            time.sleep(1)
            status, took = execute(addr)
            took = f" in {took * 1000:.0f} ms" if took is not None else ""
            print(f"flood:     {len(flood)} idle connections (server ulimit -n 1024), then POST /execute: {status}{took}", flush=True)
            start = time.time()
            while not status.endswith("200 OK") and time.time() - start < a.bound:
                time.sleep(1)
                status, _ = execute(addr)
            if status.endswith("200 OK"):
                print(f"           POST /execute answers 200 again {time.time() - start + 1:.0f} s after the flood", flush=True)
            else:
                print(f"           POST /execute still failing {a.bound:.0f} s after the flood: {status}", flush=True)
            for s in flood:
                s.close()
        finally:
            stop_server(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
