#!/usr/bin/python3
"""bench/run.py - the smtpd benchmark: our server against Postfix's smtp-sink and aiosmtpd.

How to run (from the top of the repository):

    make bench                      builds build/bench/{sink,loadgen}, installs the anchors
                                    (as root) and runs this script with ROUNDS=3
    make bench ROUNDS=5             more rounds, steadier medians
    /usr/bin/python3 bench/run.py --cases 1,4 --rounds 1     a few cases, by hand (after make bench)
    /usr/bin/python3 bench/run.py --cases 2 --rounds 1 --servers smtpd   our server alone
    /usr/bin/python3 bench/run.py --profile                  also strace -c both sinks (case 1, 16 -d)

The servers, each started on a fresh free port on 127.0.0.1:
    smtpd      build/bench/sink: the smtpd library with a no-op message handler (bench/sink.cpp)
    smtp-sink  Postfix's test sink: smtp-sink -u nobody -m 10000 -t 300 127.0.0.1:PORT 4096
    aiosmtpd   python3 -m aiosmtpd -n -c aiosmtpd.handlers.Sink (Debian's python3-aiosmtpd)

The cases (every client and server share this machine's cores, so client cost counts too):
    1  Postfix smtp-source, lock-step, HELO, 1 KiB messages, at 1, 16 and 100 sessions: many
       messages per connection (-d) and one message per connection (connect, HELO, MAIL, RCPT,
       DATA, QUIT). Messages per second, from the client's wall time.
    2  smtp-source, 16 sessions, 100 KiB messages, many per connection: messages/s and MiB/s.
       Then bench/loadgen, 16 connections, lock-step, 100 KiB messages, with DATA and with
       BDAT (RFC 3030 CHUNKING: each message one "BDAT 102400 LAST" chunk): messages/s, BDAT's
       next to DATA's. smtp-sink and aiosmtpd offer no CHUNKING: n/a for BDAT.
    3  bench/loadgen (EHLO) at 1 and 16 connections, lock-step and pipelined (RFC 2920: MAIL,
       RCPT, DATA in one write; message end plus the next MAIL/RCPT/DATA in one write), 1 KiB
       messages: messages/s. Needs PIPELINING in the EHLO reply (aiosmtpd does not offer it).
    4  One 50 MiB message over one connection, on a freshly started server: MiB/s (whole
       session) and the server's peak RSS (VmHWM in /proc/PID/status). Twice for smtpd: with
       the buffered handler (the whole message in memory, as the anchors' sinks do not keep
       it) and with a stream_handler (`sink ... stream`: pieces of 64 KiB, dropped).
    5  1,000, 5,000 and 10,000 concurrent idle connections after EHLO, held by loadgen, on a
       freshly started server: RSS and virtual size per connection ((now - before) / N, from
       VmRSS and VmSize), the thread count, then one NOOP on every connection: how many
       answered 250. Bounded in time: a server that cannot take them all in time gets "n/a".
    6  Server CPU seconds (utime + stime from /proc/PID/stat) per 10,000 messages, measured
       around the 16-session runs of case 1.

Servers run alternately (smtpd, smtp-sink, aiosmtpd, smtpd, ...) for --rounds rounds. For each
case the table shows each server's median and the median of the per-round ratios smtpd/anchor.
Message counts are fixed per case (aiosmtpd gets a quarter of them: it is ~4x slower and the
rates are per second anyway), so every run is bounded in count and time.

Output: the table on stdout; one JSON line per run in BUILD/bench/results.jsonl (rewritten by
each invocation); BUILD/bench/throughput.dat and bench/throughput.png (bench/throughput.gp:
messages/s against sessions for case 1 -d). Uses the Python 3 standard library only.
"""

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = "smtpd"
ANCHORS = ("smtp-sink", "aiosmtpd")
SERVERS = (OURS,) + ANCHORS
# aiosmtpd runs a quarter of each message count, so its runs take about as long as the others.
COUNT_SCALE = {"smtpd": 1.0, "smtp-sink": 1.0, "aiosmtpd": 0.25}
CLK_TCK = os.sysconf("SC_CLK_TCK")
BIG_MESSAGE = 50 * 1024 * 1024
IDLE_TIMEOUT = 45  # seconds loadgen may take to open the idle connections, and again for NOOP


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


# --- servers -------------------------------------------------------------------------------------

def free_port():
    """A port that was free on 127.0.0.1 a moment ago (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_status(pid):
    """The numeric fields of /proc/PID/status we use: VmRSS, VmSize, VmHWM (KiB), Threads."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmSize", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid):
    """utime + stime of the whole process (all threads, living and exited), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


class Server:
    """One server process on a fresh loopback port."""

    def __init__(self, kind, build, stream=False):
        self.kind = kind
        self.build = build
        self.stream = stream  # smtpd only: a stream_handler instead of the buffered handler
        self.proc = None
        self.port = None
        self.errlog = None

    def command(self):
        addr = f"127.0.0.1:{self.port}"
        if self.kind == OURS:
            return [os.path.join(self.build, "bench", "sink"), addr, "20000"] + (
                ["stream"] if self.stream else [])
        if self.kind == "smtp-sink":
            return ["smtp-sink", "-u", "nobody", "-m", "10000", "-t", "300", addr, "4096"]
        # -s: allow the 50 MiB message (the default limit is 32 MiB).
        return ["/usr/bin/python3", "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink",
                "-s", str(64 * 1024 * 1024), "-l", addr]

    def start(self):
        for _attempt in range(3):
            self.port = free_port()
            self.errlog = open(os.path.join(self.build, "bench", f"{self.kind}.stderr"), "ab")
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=self.errlog)
            if self.wait_ready(15):
                return self
            self.stop()
        raise RuntimeError(f"{self.kind} did not start (see {self.errlog.name})")

    def wait_ready(self, timeout):
        """Connect until the greeting (220) arrives, then QUIT."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        s.recv(512)
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.errlog:
            self.errlog.close()
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid


# --- clients -------------------------------------------------------------------------------------

class RunFailed(Exception):
    pass


class NotApplicable(Exception):
    pass


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(server, argv, timeout):
    """Run a client to completion; its wall time, its CPU and the server's CPU meanwhile."""
    cpu0, ccpu0 = cpu_seconds(server.pid), children_cpu()
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"timed out after {timeout} s")
    wall = time.monotonic() - t0
    return p, wall, cpu_seconds(server.pid) - cpu0, children_cpu() - ccpu0


def smtp_source(server, sessions, messages, size, per_connection):
    argv = ["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-M", "bench.localhost", "-f", "source@example.test", "-t", "sink@example.test"]
    if not per_connection:
        argv.insert(1, "-d")
    argv.append(f"127.0.0.1:{server.port}")
    p, wall, server_cpu, client_cpu = timed(server, argv, 120)
    if p.returncode != 0:
        raise RunFailed(f"smtp-source exit {p.returncode}: {p.stderr.decode(errors='replace')[-300:]}")
    return {"messages": messages, "seconds": wall, "msgs_per_s": messages / wall,
            "mib_per_s": messages * size / wall / 2**20, "server_cpu_s": server_cpu,
            "client_cpu_s": client_cpu,
            "server_cpu_per_10k": server_cpu * 10000 / messages}


def loadgen(build, server, conns, messages, size, pipeline, bdat=False):
    argv = [os.path.join(build, "bench", "loadgen"), "send", "--port", str(server.port),
            "--conns", str(conns), "--messages", str(messages), "--size", str(size),
            "--timeout", "100"]
    if pipeline:
        argv.append("--pipeline")
    if bdat:
        argv.append("--bdat")
    p, wall, server_cpu, client_cpu = timed(server, argv, 120)
    try:
        out = json.loads(p.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RunFailed(f"loadgen said nothing useful: {p.stderr.decode(errors='replace')[-300:]}")
    if "PIPELINING" in out.get("first_error", ""):
        raise NotApplicable("no PIPELINING")
    if "CHUNKING" in out.get("first_error", ""):
        raise NotApplicable("no CHUNKING")
    if p.returncode != 0:
        raise RunFailed(f"loadgen: {out['ok']}/{messages} ok, {out['errors']} errors, "
                        f"first: {out['first_error']}")
    out.update(server_cpu_s=server_cpu, client_cpu_s=client_cpu, wall_s=wall)
    return out


def idle_connections(build, server, n):
    """Case 5 on a fresh server: hold n idle connections, read the server's memory, NOOP all."""
    time.sleep(0.3)
    before = read_status(server.pid)
    argv = [os.path.join(build, "bench", "loadgen"), "idle", "--port", str(server.port),
            "--conns", str(n), "--timeout", str(IDLE_TIMEOUT)]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        ready = json.loads(p.stdout.readline())
        if ready["ready"] != n:
            raise NotApplicable(f"{ready['ready']}/{n} connected in {ready['seconds']:.0f} s"
                                f" ({ready['first_error'] or 'time limit'})")
        time.sleep(0.5)  # let the server finish whatever it does after the EHLO reply
        held = read_status(server.pid)
        p.stdin.write("noop\n")
        p.stdin.flush()
        noop = json.loads(p.stdout.readline())
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return {"conns": n, "connect_s": ready["seconds"],
            "rss_kib_per_conn": (held["VmRSS"] - before["VmRSS"]) / n,
            "vsz_kib_per_conn": (held["VmSize"] - before["VmSize"]) / n,
            "threads": held["Threads"], "rss_kib_before": before["VmRSS"],
            "rss_kib_held": held["VmRSS"], "noop_ok": noop["ok"],
            "noop_all_ok": noop["ok"] == n, "noop_s": noop["seconds"]}


def big_message(build, server):
    """Case 4 on a fresh server: one 50 MiB message."""
    out = loadgen(build, server, 1, 1, BIG_MESSAGE, False)
    status = read_status(server.pid)
    out.update(peak_rss_mib=status["VmHWM"] / 1024,
               peak_rss_per_message=status["VmHWM"] * 1024 / BIG_MESSAGE)
    return out


# --- the cases -----------------------------------------------------------------------------------

class Row:
    """One line of the table: a metric of a case."""

    def __init__(self, label, metric, unit, higher_is_better=True, ratio=True, fmt="{:.0f}"):
        self.label, self.metric, self.unit = label, metric, unit
        self.higher_is_better, self.ratio, self.fmt = higher_is_better, ratio, fmt


class Case:
    """name: the id in results.jsonl; run(server) -> metrics; fresh: a new server for each run."""

    def __init__(self, number, name, run, rows, fresh=False, stream=False):
        self.number, self.name, self.run, self.rows, self.fresh = number, name, run, rows, fresh
        self.stream = stream  # fresh servers: smtpd with its stream_handler


def scaled(server, count):
    return max(1, int(count * COUNT_SCALE[server.kind]))


def make_cases(build):
    cases = []
    # 1 (and 6): smtp-source. Counts chosen so that a run takes about 1-3 s on this machine.
    for per_connection in (False, True):
        for sessions in (1, 16, 100):
            if per_connection:
                count = {1: 2000, 16: 5000, 100: 5000}[sessions]
                mode, label = "conn", f"smtp-source 1 msg/conn, {sessions} sess"
            else:
                count = {1: 15000, 16: 25000, 100: 20000}[sessions]
                mode, label = "d", f"smtp-source -d, {sessions} sess"
            rows = [Row("1 " + label, "msgs_per_s", "msg/s")]
            if sessions == 16:
                rows.append(Row(f"6 CPU/10k msgs, {label[12:]}", "server_cpu_per_10k",
                                "cpu s", higher_is_better=False, fmt="{:.2f}"))
            cases.append(Case(1, f"c1-{mode}-s{sessions}",
                              lambda srv, s=sessions, c=count, pc=per_connection:
                              smtp_source(srv, s, scaled(srv, c), 1024, pc), rows))
    # 2: 100 KiB messages.
    cases.append(Case(2, "c2-100k-s16",
                      lambda srv: smtp_source(srv, 16, scaled(srv, 2000), 100 * 1024, False),
                      [Row("2 smtp-source -d, 16 sess, 100 KiB", "msgs_per_s", "msg/s"),
                       Row("2   the same in MiB/s", "mib_per_s", "MiB/s")]))
    # 2 again with our generator: DATA, then BDAT (RFC 3030) where the server offers CHUNKING.
    # 5000 messages: smtpd takes about 0.5 s for them, smtp-sink about 4 s.
    for bdat in (False, True):
        cases.append(Case(2, f"c2-100k-c16-{'bdat' if bdat else 'data'}",
                          lambda srv, b=bdat: loadgen(build, srv, 16, scaled(srv, 5000),
                                                      100 * 1024, False, b),
                          [Row(f"2 loadgen {'BDAT' if bdat else 'DATA'}, 16 conn, 100 KiB",
                               "msgs_per_s", "msg/s")]))
    # 3: our generator, EHLO, lock-step and pipelined.
    counts = {(False, 1): 15000, (False, 16): 25000, (True, 1): 60000, (True, 16): 100000}
    for pipeline in (False, True):
        for conns in (1, 16):
            mode = "pipelined" if pipeline else "lock-step"
            cases.append(Case(3, f"c3-{'pipe' if pipeline else 'lock'}-c{conns}",
                              lambda srv, p=pipeline, n=conns, c=counts[(pipeline, conns)]:
                              loadgen(build, srv, n, scaled(srv, c), 1024, p),
                              [Row(f"3 loadgen {mode}, {conns} conn", "msgs_per_s", "msg/s")]))
    # 4: one 50 MiB message.
    cases.append(Case(4, "c4-50mib", lambda srv: big_message(build, srv),
                      [Row("4 one 50 MiB message", "mib_per_s", "MiB/s"),
                       Row("4   peak RSS", "peak_rss_mib", "MiB", higher_is_better=False),
                       Row("4   peak RSS / message size", "peak_rss_per_message", "x",
                           higher_is_better=False, ratio=False, fmt="{:.2f}")],
                      fresh=True))
    cases.append(Case(4, "c4-50mib-stream", lambda srv: big_message(build, srv),
                      [Row("4 the same, smtpd with a stream_handler", "mib_per_s", "MiB/s"),
                       Row("4   peak RSS", "peak_rss_mib", "MiB", higher_is_better=False)],
                      fresh=True, stream=True))
    # 5: idle connections.
    for n in (1000, 5000, 10000):
        cases.append(Case(5, f"c5-idle-{n}", lambda srv, n=n: idle_connections(build, srv, n),
                          [Row(f"5 {n} idle: RSS per conn", "rss_kib_per_conn", "KiB",
                               higher_is_better=False, fmt="{:.1f}"),
                           Row(f"5 {n} idle: VSZ per conn", "vsz_kib_per_conn", "KiB",
                               higher_is_better=False, fmt="{:.1f}"),
                           Row(f"5 {n} idle: threads", "threads", "", ratio=False),
                           Row(f"5 {n} idle: time to connect all", "connect_s", "s",
                               higher_is_better=False, fmt="{:.2f}"),
                           Row(f"5 {n} idle: NOOP answered 250", "noop_ok", "conns",
                               ratio=False)],
                          fresh=True))
    return cases


# --- running and reporting -----------------------------------------------------------------------

def run_case(case, servers, build, rounds, results, out, only=SERVERS):
    """Run one case: every round, every server in turn. results[case.name][server] = [metrics].
    Servers not in `only` (--servers) are left out: n/a."""
    per_server = results.setdefault(case.name, {s: [] for s in SERVERS})
    skip = set(SERVERS) - set(only)  # and servers for which the case makes no sense (n/a in
    # round 1)
    for rnd in range(1, rounds + 1):
        for kind in SERVERS:
            if kind in skip:
                per_server[kind].append(None)
                continue
            srv = Server(kind, build, case.stream).start() if case.fresh else servers[kind]
            record = {"case": case.name, "server": kind, "round": rnd, "time": time.time()}
            try:
                metrics = case.run(srv)
                record.update(ok=True, metrics=metrics)
                log(f"  {case.name:14} {kind:10} round {rnd}: {short(case, metrics)}")
            except NotApplicable as e:
                metrics = None
                skip.add(kind)
                record.update(ok=False, na=str(e))
                log(f"  {case.name:14} {kind:10} round {rnd}: n/a ({e})")
            except RunFailed as e:
                metrics = None
                record.update(ok=False, error=str(e))
                log(f"  {case.name:14} {kind:10} round {rnd}: FAILED {e}")
            finally:
                if case.fresh:
                    srv.stop()
            per_server[kind].append(metrics)
            out.write(json.dumps(record) + "\n")
            out.flush()


def short(case, metrics):
    return ", ".join(f"{r.metric}={r.fmt.format(metrics[r.metric])}" for r in case.rows)


def summarize(case, row, per_server):
    """The medians per server and the medians of per-round ratios smtpd/anchor (None: n/a)."""
    medians = {}
    for kind in SERVERS:
        values = [m[row.metric] for m in per_server[kind] if m is not None]
        medians[kind] = statistics.median(values) if values else None
    ratios = {}
    for anchor in ANCHORS:
        rs = [ours[row.metric] / theirs[row.metric]
              for ours, theirs in zip(per_server[OURS], per_server[anchor])
              if ours is not None and theirs is not None and theirs[row.metric]]
        ratios[anchor] = statistics.median(rs) if rs and row.ratio else None
    return medians, ratios


def print_table(cases, results, rounds):
    lines = []
    head = (f"{'case':44} {'unit':6} {'smtpd':>9} {'smtp-sink':>10} {'aiosmtpd':>9}"
            f" {'us/sink':>8} {'us/aio':>8}")
    lines.append(head)
    lines.append("-" * len(head))
    rows = [(row.label, case, row) for case in cases for row in case.rows]
    rows.sort(key=lambda x: int(x[0].split()[0]))  # stable: case 6 rows move to the end
    for label, case, row in rows:
        medians, ratios = summarize(case, row, results[case.name])
        cells = [row.fmt.format(medians[k]) if medians[k] is not None else "n/a" for k in SERVERS]
        rcells = [f"{ratios[a]:.2f}" if ratios[a] is not None else ("n/a" if row.ratio else "")
                  for a in ANCHORS]
        unit = row.unit + ("" if not row.ratio else (" ↑" if row.higher_is_better else " ↓"))
        lines.append(f"{label:44} {unit:6} {cells[0]:>9} {cells[1]:>10} {cells[2]:>9}"
                     f" {rcells[0]:>8} {rcells[1]:>8}")
    lines.append("")
    lines.append(f"medians of {rounds} alternating rounds; us/x = median of per-round ratios "
                 "smtpd/x; ↑ higher is better, ↓ lower is better")
    print("\n".join(lines), flush=True)
    return "\n".join(lines) + "\n"


def plot(build, results):
    """Messages/s against sessions (case 1 -d) for each server: a data file, then gnuplot."""
    datafile = os.path.join(build, "bench", "throughput.dat")
    with open(datafile, "w") as f:
        f.write("# sessions " + " ".join(SERVERS) + "  (median msg/s, smtp-source -d, 1 KiB)\n")
        for sessions in (1, 16, 100):
            per_server = results.get(f"c1-d-s{sessions}")
            if per_server is None:
                return
            cells = []
            for kind in SERVERS:
                values = [m["msgs_per_s"] for m in per_server[kind] if m is not None]
                cells.append(f"{statistics.median(values):.1f}" if values else "NaN")
            f.write(f"{sessions} " + " ".join(cells) + "\n")
    if not shutil.which("gnuplot"):
        log("gnuplot not found: no plot")
        return
    png = os.path.join(ROOT, "bench", "throughput.png")
    subprocess.run(["gnuplot", "-e", f"datafile='{datafile}'; outfile='{png}'",
                    os.path.join(ROOT, "bench", "throughput.gp")], check=True)
    log(f"plot: {os.path.relpath(png, os.getcwd())}")


def profile(build, servers):
    """strace -c -f on each C server during one case-1 run (smtp-source -d, 16 sessions)."""
    if not shutil.which("strace"):
        log("strace not found: no profile")
        return
    for kind in (OURS, "smtp-sink"):
        srv = servers[kind]
        trace = os.path.join(build, "bench", f"strace-{kind}.txt")
        st = subprocess.Popen(["strace", "-c", "-f", "-o", trace, "-p", str(srv.pid)],
                              stderr=subprocess.DEVNULL)
        time.sleep(1)
        m = smtp_source(srv, 16, 20000, 1024, False)
        st.terminate()
        st.wait(30)
        print(f"\nstrace -c -f -p {kind} during smtp-source -d -s 16 -m 20000 "
              f"({m['msgs_per_s']:.0f} msg/s under strace):")
        with open(trace) as f:
            print(f.read(), flush=True)


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < need and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < need:
        log(f"warning: open-file limit {hard} < {need}: the 10,000-connection case may fail")


def versions():
    def pkg(name):
        p = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True,
                           text=True)
        return p.stdout or "?"
    return (f"{os.cpu_count()} CPUs, Linux {os.uname().release}; postfix {pkg('postfix')}, "
            f"python3-aiosmtpd {pkg('python3-aiosmtpd')}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build", help="the build directory (default build)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--cases", default="1,2,3,4,5",
                    help="case numbers to run, e.g. 1,4 (6 comes with 1)")
    ap.add_argument("--servers", default=",".join(SERVERS),
                    help="servers to run, e.g. smtpd (default all; the others show n/a)")
    ap.add_argument("--profile", action="store_true",
                    help="also strace -c the C servers during case 1, 16 sessions -d")
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    wanted = {int(c) for c in args.cases.split(",")}
    only = [k for k in SERVERS if k in args.servers.split(",")]
    if not only or len(only) != len(set(args.servers.split(","))):
        sys.exit(f"--servers takes some of {','.join(SERVERS)}, not {args.servers}")
    for tool in (os.path.join(build, "bench", "sink"), os.path.join(build, "bench", "loadgen")):
        if not os.access(tool, os.X_OK):
            sys.exit(f"{tool} is missing: run `make bench`")
    if args.profile and ("smtp-sink" not in only or OURS not in only):
        sys.exit("--profile needs smtpd and smtp-sink in --servers")
    needed = (["smtp-sink"] if "smtp-sink" in only else []) + \
        (["smtp-source"] if wanted & {1, 2} else [])
    for tool in needed:
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: install Postfix (`make bench` does, as root)")
    os.makedirs(os.path.join(build, "bench"), exist_ok=True)
    raise_fd_limit(10100)  # per process: 10,000 idle connections plus a few

    started = time.monotonic()
    print(f"smtpd benchmark: {args.rounds} rounds; {versions()}", flush=True)
    cases = [c for c in make_cases(build) if c.number in wanted]
    results = {}
    servers = {}
    results_path = os.path.join(build, "bench", "results.jsonl")
    with open(results_path, "w") as out:
        try:
            # Cases 1-3 share one long-running instance of each server; 4 and 5 start fresh ones.
            if any(not c.fresh for c in cases) or args.profile:
                servers = {k: Server(k, build).start() for k in only}
            for case in cases:
                log(f"{case.name}:")
                run_case(case, servers, build, args.rounds, results, out, only)
            if args.profile:
                profile(build, servers)
        finally:
            for srv in servers.values():
                srv.stop()
    print()
    table = print_table(cases, results, args.rounds)
    with open(os.path.join(build, "bench", "table.txt"), "w") as f:
        f.write(table)
    plot(build, results)
    print(f"\nresults: {os.path.relpath(results_path, os.getcwd())}; "
          f"took {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
