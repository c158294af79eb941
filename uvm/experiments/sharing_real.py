"""Real-world sharing (the paper's table of production servers, its Figure 5 (?)): how
much the memory of real programs shares when each is a VM.

Each mix is a set of programs installed on this machine (uvm/experiments/procmem.py), each
started with its own work: Python interpreters running standard-library servers on
localhost (http.server, xmlrpc.server) that serve requests to themselves, or building and
querying their own data (json, sqlite3, tokenize); perl, node and awk building tables of
their own. Once all are ready, the pages each holds in RAM are read from /proc/PID/mem and
the programs are stopped; then each process's pages are written, page by page, into a VM of
its own on one machine (large enough that nothing is reclaimed), the scanner runs until a
pass merges nothing, and every page is read back and compared with what was read.

Mixes: "same-python", five processes of the distribution's Python each running different
work (like the paper's Linux web servers: the same software, different data);
"python-versions", one http.server under each installed Python version (the same program,
different builds); "mixed", different interpreters and programs. A program not installed
here is left out (and said so).

The paper reports 10% to 43% of memory shared and 7.2%, 18.7% and 32.9% reclaimed for its
three production systems (?). Processes are smaller than the paper's whole guests (no
kernel, no page cache), so the zero pages and shared libraries of a guest OS are missing."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from uvm.experiments import paper, procmem
from uvm.experiments.base import Experiment, Trial, pyplot
from uvm.experiments.procmem import Program
from uvm.sizes import PAGE_SIZE

MIB = 1 << 20
PY = "/usr/bin/python3"
READY = "print('ready', flush=True); sys.stdin.read()"
SERVE = ("import sys, threading, urllib.request\n"
         "t = threading.Thread(target=s.serve_forever, daemon=True); t.start()\n")
PY_WORK = {
    "http.server": ("import functools, http.server\n"
                    "class H(http.server.SimpleHTTPRequestHandler):\n"
                    "    def log_message(self, *args): pass\n"
                    "s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), "
                    "functools.partial(H, directory=sys.prefix))\n" + SERVE +
                    "for i in range({n} // 200): urllib.request.urlopen("
                    "f'http://127.0.0.1:{{s.server_address[1]}}/').read()\n"),
    "xmlrpc.server": ("import xmlrpc.server, xmlrpc.client\n"
                      "s = xmlrpc.server.SimpleXMLRPCServer(('127.0.0.1', 0), logRequests=False)\n"
                      "s.register_function(pow)\n" + SERVE +
                      "p = xmlrpc.client.ServerProxy(f'http://127.0.0.1:{{s.server_address[1]}}/')\n"
                      "r = [p.pow(i, 3) for i in range({n} // 200)]\n"),
    "json": ("import sys, json, random\nrandom.seed({seed})\n"
             "d = [json.loads(json.dumps({{'k': i, 'v': random.random(), 's': str(i) * 8}})) "
             "for i in range({n})]\n"),
    "sqlite3": ("import sys, sqlite3, random\nrandom.seed({seed})\n"
                "db = sqlite3.connect(':memory:')\n"
                "db.execute('create table t(k integer primary key, v text)')\n"
                "db.executemany('insert into t values (?, ?)', ((i, '%x' % random.getrandbits(128)) "
                "for i in range({n})))\n"
                "db.execute('create index tv on t(v)'); db.execute('select count(*) from t').fetchall()\n"),
    "tokenize": ("import sys, glob, tokenize, sysconfig\n"
                 "files = sorted(glob.glob(sysconfig.get_paths()['stdlib'] + '/*.py'))\n"
                 "toks = [list(tokenize.generate_tokens(open(f, encoding='utf-8', "
                 "errors='replace').readline)) for f in files[{seed}::20][:{n} // 2000 + 1]]\n"),
}


def python(label: str, work: str, n: int, seed: int, exe: str = PY) -> Program:
    """A Python interpreter doing one of PY_WORK's jobs with n items."""
    code = "import sys\n" + PY_WORK[work].format(n=n, seed=seed) + READY
    return Program(label, (exe, "-c", code))


def perl(n: int) -> Program:
    return Program("perl", ("perl", "-e", f'$|=1; my %h; $h{{"k$_"}} = ("v" x 20) . $_ for 1..{n}; '
                                          'print "ready\\n"; <STDIN>;'))


def node(n: int) -> Program:
    return Program("node", ("node", "-e", f"const a = []; for (let i = 0; i < {n}; i++) "
                                          "a.push({k: i, v: 'x'.repeat(20) + i}); "
                                          "console.log('ready'); process.stdin.resume(); "
                                          "process.stdin.on('end', () => process.exit(0));"))


def awk(n: int) -> Program:
    return Program("awk", ("awk", f'BEGIN {{ for (i = 0; i < {n}; i++) a[i] = "x" i; '
                                  'print "ready"; fflush(); while ((getline line) > 0) {} }'))


@functools.lru_cache(maxsize=1)
def versions() -> list[str]:
    """The Python interpreters that run here, one per version (python3.X on PATH), as the
    real executables (with pyenv, every version it has installed is tried)."""
    env = dict(os.environ)
    if shutil.which("pyenv") is not None:
        got = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True,
                             timeout=30)
        env["PYENV_VERSION"] = ":".join(got.stdout.split())
    found = []
    for minor in range(6, 15):
        exe = shutil.which(f"python3.{minor}")
        if exe is None:
            continue
        try:
            got = subprocess.run([exe, "-c", "import sys; print(sys.executable)"],
                                 capture_output=True, text=True, timeout=30, env=env)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if got.returncode == 0 and got.stdout.strip():
            found.append(got.stdout.strip())
    return found


def mixes(p: dict[str, Any]) -> dict[str, list[Program]]:
    n = p["items"]
    same = [python(f"python {w}", w, n, i) for i, w in enumerate(PY_WORK)]
    found = [exe for exe in versions() if Path(exe).resolve() != Path(PY).resolve()]
    vers = [python(Path(exe).name + " http.server", "http.server", n, i, exe)
            for i, exe in enumerate([PY, *found][-p["versions"]:])]
    mixed = [python("python http.server", "http.server", n, 0),
             *[python(f"{Path(exe).name} xmlrpc.server", "xmlrpc.server", n, 1, exe)
               for exe in found[-1:]],
             perl(n), node(n), awk(n)]
    out = {"same-python": same, "python-versions": vers, "mixed": mixed}
    return {k: [prog for prog in v if prog.path() is not None] for k, v in out.items()}


PAPER = paper.Paper(
    "Figure 5 (table of production servers) (?)",
    "production systems: 10 Windows NT VMs; 9 Linux VMs; 5 Linux web servers, their sharing "
    "measured in service",
    (paper.Number("memory shared, least", 10, "%", "shared_pct_min", uncertain=True),
     paper.Number("memory shared, most", 43, "%", "shared_pct_max", uncertain=True),
     paper.Number("memory reclaimed, least", 7.2, "%", "saved_pct_min", uncertain=True),
     paper.Number("memory reclaimed, the middle system", 18.7, "%", None, uncertain=True),
     paper.Number("memory reclaimed, most", 32.9, "%", "saved_pct_max", uncertain=True)))


def params(quick: bool) -> dict[str, Any]:
    return {"items": 20_000 if quick else 200_000, "max_pages": 4096 if quick else 32768,
            "versions": 3 if quick else 5}


def setup(p: dict[str, Any]) -> str:
    return (f"mixes of real programs installed here (Python servers and workers, Python "
            f"versions, perl, node, awk), each with {p['items']} items of its own work; the "
            f"pages each holds in RAM (at most {p['max_pages'] * PAGE_SIZE // MIB} MiB) read "
            f"from /proc/PID/mem into a VM each")


def measure(name: str, programs: list[Program], p: dict[str, Any], trial: Trial) -> dict[str, Any]:
    """Starts the mix, reads its memory, places it in VMs, shares it; the counts."""
    with procmem.running(programs) as procs:
        images = [procmem.pages(proc.pid, p["max_pages"]) for proc in procs]
    total = sum(len(img) for img in images)
    with trial.machine(memory=total * PAGE_SIZE + 32 * MIB, reclaim=False,
                 seed=trial.seed_for("machine", name)) as m:
        vms = [m.create_vm(f"vm{i}", memory=len(img) * PAGE_SIZE + MIB)
               for i, img in enumerate(images)]
        for vm, img in zip(vms, images):
            for i, page in enumerate(img):
                vm.write(i * PAGE_SIZE, page)
        passes = 0
        while passes < 6:
            passes += 1
            if m.share_now() == 0:
                break
        mismatched = sum(vm.read(i * PAGE_SIZE, PAGE_SIZE) != page
                         for vm, img in zip(vms, images) for i, page in enumerate(img))
        st = m.stats()
        in_use = sum(v["resident"] + v["swapped"] + v["sharing"]
                     for v in m.stats_with_vms(vms)[1])
    return {"mix": name, "programs": [prog.label for prog in programs],
            "pages_per_vm": [len(img) for img in images], "pages_in_use": in_use,
            "sharing": st["sharing"], "saved": st["saved"], "zero_shared": st["zero_shared"],
            "shared_pct": 100.0 * st["sharing"] / max(in_use, 1),
            "saved_pct": 100.0 * st["saved"] / max(in_use, 1),
            "scan_passes": passes, "pages_placed": total, "pages_mismatched": mismatched}


def run(trial: Trial) -> None:
    p, log = params(trial.quick), trial.log
    if sys.platform != "linux":
        raise RuntimeError("sharing-real reads /proc: Linux only")
    rows: list[dict[str, Any]] = []
    trial.results["rows"] = rows
    todo = mixes(p)
    log(f"real-world sharing: {len(todo)} mixes of real programs, each process's memory "
        f"placed in a VM of its own")
    log(f"{'mix':>16} {'VMs':>4} {'in use MiB':>11} {'shared %':>9} {'saved %':>8} "
        f"{'zero pg':>8} {'mismatched':>11}")
    for i, (name, programs) in enumerate(todo.items()):
        trial.progress(i / len(todo), name)
        if len(programs) < 2:
            log(f"{name:>16}: fewer than two of its programs are installed here; left out")
            continue
        r = measure(name, programs, p, trial)
        rows.append(r)
        log(f"{name:>16} {len(programs):>4} {r['pages_in_use'] * PAGE_SIZE / MIB:>11.1f} "
            f"{r['shared_pct']:>9.1f} {r['saved_pct']:>8.1f} {r['zero_shared']:>8} "
            f"{r['pages_mismatched']:>11}")
        log(f"{'':>16} programs: {', '.join(r['programs'])}")


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["shared_pct"] for r in rows], 0.4, label="uvm: shared")
    ax.bar([i + 0.2 for i in x], [r["saved_pct"] for r in rows], 0.4, label="uvm: reclaimed")
    lo, hi = paper.value(results, "shared_pct_min"), paper.value(results, "shared_pct_max")
    if lo is not None and hi is not None:
        ax.axhspan(lo, hi, color="C0", alpha=0.12,
                   label=f"{paper.label(results, 'shared_pct_min')}: {lo:g}-{hi:g}% shared")
    reclaimed = [n["value"] for n in results["paper"]["numbers"]
                 if n["what"].startswith("memory reclaimed")]
    for v in reclaimed:
        ax.axhline(v, color="C1", ls="--", lw=0.8)
    ax.plot([], [], color="C1", ls="--", label=f"{paper.label(results, 'saved_pct_min')}: "
                                               f"{' / '.join(f'{v:g}' for v in reclaimed)}% "
                                               f"reclaimed")
    ax.set_xticks(list(x), [f"{r['mix']}\n({len(r['programs'])} VMs)" for r in rows])
    ax.set(ylabel="% of memory in use", ylim=(0, 100),
           title="Real programs' memory, a VM each: shared and reclaimed")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figures(results: dict[str, Any]) -> dict[str, float | None]:
    """The least and most shared and reclaimed over the mixes, and each mix's."""
    rows = results["rows"]
    if not rows:
        return {}
    out: dict[str, float | None] = {
        "shared_pct_min": min(r["shared_pct"] for r in rows),
        "shared_pct_max": max(r["shared_pct"] for r in rows),
        "saved_pct_min": min(r["saved_pct"] for r in rows),
        "saved_pct_max": max(r["saved_pct"] for r in rows)}
    for r in rows:
        out[f"shared_pct_{r['mix']}"] = r["shared_pct"]
        out[f"saved_pct_{r['mix']}"] = r["saved_pct"]
    return out


def differs(results: dict[str, Any], medians: dict[str, float]) -> str:
    """Where uvm's mixes fall against the paper's range, and why."""
    rows = results["rows"]
    if not rows:
        return "No mix could be run here."
    top = max(rows, key=lambda r: r["shared_pct"])
    low = min(rows, key=lambda r: r["shared_pct"])
    lo, hi = medians.get("shared_pct_min", low["shared_pct"]), medians.get("shared_pct_max", 0.0)
    where = ("within" if 10 <= lo and hi <= 43 else "reaching above" if hi > 43
             else "below" if hi < 10 else "partly outside")
    return (f"uvm's mixes share {lo:.0f}% to {hi:.0f}% of memory, {where} the paper's 10-43% "
            f"(?): most in '{top['mix']}' (the same interpreter's code and data structures in "
            f"every VM), least in '{low['mix']}'; these are processes, not whole guests, so a "
            f"guest OS's kernel, page cache and zero pages, which the paper's servers shared "
            f"too, are missing.")


EXPERIMENT = Experiment("sharing-real", "real programs' memory, a VM each: shared and reclaimed",
                        params, run, plot, figures, PAPER, setup, differs)
