#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A/B latency of CNI ADD and DEL between two builds, interleaved call by call
so that a noisy machine loads both alike.

Two hosts (network namespaces created here, prefix wv<6 hex>-, removed at exit)
each run one build's `weaver`; then N pods are added, one on each host in turn
(the order alternating), then deleted the same way; prints p50/p99/mean of each.
With PARALLEL=R it instead runs R bursts of 50 parallel ADDs per build, in
turn, and prints the wall clock of a burst.

Usage (as root): OLD=DIR NEW=DIR e2e/ab/cni_ab.py [N]   (DIR: release bin dir)
"""
import os, subprocess, sys, time, json, statistics as st, secrets, signal
os.makedirs("/tmp/weave-ab", exist_ok=True)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
OLD = os.environ["OLD"]; NEW = os.environ["NEW"]
tag = "wv" + secrets.token_hex(3)
run = lambda *a: subprocess.run(a, check=True, capture_output=True)
hosts, procs, pods = {}, [], []
def cleanup():
    for p in procs:
        try: p.send_signal(signal.SIGTERM); p.wait(timeout=10)
        except Exception: p.kill()
    for ns in pods + list(hosts.values()):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
try:
    for which, d in (("old", OLD), ("new", NEW)):
        ns = f"{tag}-{which}"; hosts[which] = ns
        run("ip", "netns", "add", ns)
        run("ip", "-n", ns, "link", "set", "lo", "up")
        state = f"/tmp/weave-ab/{tag}-{which}"; os.makedirs(state, exist_ok=True)
        p = subprocess.Popen(["ip", "netns", "exec", ns, f"{d}/weaver", "--nickname", which,
            "--state-dir", state, "--api-socket", f"{state}/weave.sock", "--http-addr", "off",
            "--metrics-addr", "off", "--mtu", "1376", "--ipalloc-init", "consensus=1",
            "--log-level", "warn"], stdout=subprocess.DEVNULL, stderr=open(f"{state}/log", "w"))
        procs.append(p)
    for which in hosts:
        sock = f"/tmp/weave-ab/{tag}-{which}/weave.sock"
        for _ in range(200):
            if os.path.exists(sock): break
            time.sleep(0.05)
    def call(which, cmd, i, ns):
        d = OLD if which == "old" else NEW
        sock = f"/tmp/weave-ab/{tag}-{which}/weave.sock"
        conf = json.dumps({"cniVersion": "1.0.0", "name": "weave", "type": "weave-net", "socket": sock})
        env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": f"c{i}", "CNI_NETNS": f"/run/netns/{ns}",
               "CNI_IFNAME": "eth0", "CNI_ARGS": "", "CNI_PATH": d, "WEAVE_CNI_LOG": "warn", "PATH": os.environ["PATH"]}
        t = time.perf_counter()
        r = subprocess.run(["nsenter", f"--net=/run/netns/{hosts[which]}", f"{d}/weave-net"],
                           input=conf.encode(), env=env, capture_output=True)
        took = time.perf_counter() - t
        if r.returncode != 0: raise SystemExit(f"{which} {cmd} {i}: {r.stdout} {r.stderr}")
        return took * 1e3
    if os.environ.get("PARALLEL"):
        from concurrent.futures import ThreadPoolExecutor
        R = int(os.environ["PARALLEL"])
        walls = {"old": [], "new": []}; lat = {"old": [], "new": []}
        for r in range(R):
            for which in (("old", "new") if r % 2 == 0 else ("new", "old")):
                names = [f"{tag}-q{which[0]}{r}-{i}" for i in range(50)]
                for ns in names: pods.append(ns); run("ip", "netns", "add", ns)
                t = time.perf_counter()
                with ThreadPoolExecutor(50) as ex:
                    got = list(ex.map(lambda a: call(which, "ADD", f"q{r}-{a[0]}", a[1]), enumerate(names)))
                wall = (time.perf_counter() - t) * 1e3
                if r > 0: walls[which].append(wall); lat[which] += got
                with ThreadPoolExecutor(50) as ex:
                    list(ex.map(lambda a: call(which, "DEL", f"q{r}-{a[0]}", a[1]), enumerate(names)))
        for w in ("old", "new"):
            v = sorted(lat[w]); print(f"50 parallel ADDs, {w}: wall median {st.median(walls[w]):.1f} ms over {len(walls[w])} bursts; per-call p50 {v[len(v)//2]:.1f} p99 {v[(len(v)-1)*99//100]:.1f} ms")
        print(f"wall new/old {st.median(walls['new'])/st.median(walls['old']):.2f}x")
        raise SystemExit(0)
    res = {("old", "ADD"): [], ("new", "ADD"): [], ("old", "DEL"): [], ("new", "DEL"): []}
    for i in range(-2, N):  # two warm-up calls each
        for which in (("old", "new") if i % 2 == 0 else ("new", "old")):
            ns = f"{tag}-p{which[0]}{i}"; pods.append(ns); run("ip", "netns", "add", ns)
            a = call(which, "ADD", i, ns)
            if i >= 0: res[(which, "ADD")].append(a)
    for i in range(-2, N):
        for which in (("old", "new") if i % 2 == 0 else ("new", "old")):
            dl = call(which, "DEL", i, f"{tag}-p{which[0]}{i}")
            if i >= 0: res[(which, "DEL")].append(dl)
    for cmd in ("ADD", "DEL"):
        o, n = sorted(res[("old", cmd)]), sorted(res[("new", cmd)])
        pct = lambda v, p: v[(len(v) - 1) * p // 100]
        print(f"{cmd} n={N}: p50 old {pct(o,50):.2f} ms new {pct(n,50):.2f} ms ({pct(n,50)/pct(o,50):.2f}x); "
              f"p99 old {pct(o,99):.2f} new {pct(n,99):.2f} ({pct(n,99)/pct(o,99):.2f}x); "
              f"mean old {st.mean(o):.2f} new {st.mean(n):.2f}")
finally:
    cleanup()
