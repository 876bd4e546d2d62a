#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A/B sleeve figures between two builds, interleaved round by round.

Two host pairs (network namespaces created here, prefix wv<6 hex>-, removed at
exit), one per build, each joined by a veth underlay with a pod attached on
each host; each round measures, for one pair and then the other (the order
alternating), what `weave-bench dataplane` measures: iperf3 TCP 1 stream and
UDP 64 B between the pods, ping RTT, and raw veth between the hosts as the
same-moment reference. MODE=rtt measures only the RTT added over veth, in many
short rounds. SECS sets the iperf3 duration, EXTRA extra `weaver` flags.

Usage (as root): OLD=DIR NEW=DIR e2e/ab/dataplane_ab.py [ROUNDS]
"""
import os, subprocess, sys, time, json, statistics as st, secrets, signal
os.makedirs("/tmp/weave-ab", exist_ok=True)
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
SECS = os.environ.get("SECS", "3")
EXTRA = os.environ.get("EXTRA", "").split()
BINS = {"old": os.environ["OLD"], "new": os.environ["NEW"]}
tag = "wv" + secrets.token_hex(3)
def run(*a, check=True):
    return subprocess.run(a, check=check, capture_output=True, text=True)
nss, procs = [], []
def ns_add(name):
    run("ip", "netns", "add", name); nss.append(name); run("ip", "-n", name, "link", "set", "lo", "up")
def cleanup():
    for p in procs:
        try: p.send_signal(signal.SIGTERM); p.wait(timeout=10)
        except Exception: p.kill()
    for ns in reversed(nss): subprocess.run(["ip", "netns", "del", ns], capture_output=True)
pairs = {}
try:
    for k, (w, d) in enumerate(BINS.items()):
        h1, h2 = f"{tag}-{w}1", f"{tag}-{w}2"
        ns_add(h1); ns_add(h2)
        run("ip", "link", "add", f"{tag}{w[0]}a", "netns", h1, "type", "veth", "peer", f"{tag}{w[0]}b", "netns", h2)
        for h, dev, ip in ((h1, f"{tag}{w[0]}a", f"10.99.{k}.1/24"), (h2, f"{tag}{w[0]}b", f"10.99.{k}.2/24")):
            run("ip", "-n", h, "link", "set", dev, "name", "ul0")
            run("ip", "-n", h, "addr", "add", ip, "dev", "ul0")
            run("ip", "-n", h, "link", "set", "ul0", "up")
        socks = {}
        for i, h in enumerate((h1, h2)):
            state = f"/tmp/weave-ab/{h}"; os.makedirs(state, exist_ok=True)
            socks[h] = f"{state}/weave.sock"
            args = ["ip", "netns", "exec", h, f"{d}/weaver", "--nickname", f"h{i+1}", "--state-dir", state,
                    "--api-socket", socks[h], "--http-addr", "off", "--metrics-addr", "off",
                    "--ipalloc-range", "off", "--log-level", "warn"] + EXTRA
            if i == 1: args.append(f"10.99.{k}.1")
            procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(f"{state}/log", "w")))
        pods = []
        for i, h in enumerate((h1, h2)):
            pod = f"{tag}-{w}p{i+1}"; ns_add(pod)
            for _ in range(100):
                r = subprocess.run([f"{d}/weave", "attach", f"10.2.1.{i+1}/24", f"/run/netns/{pod}"],
                                   env={**os.environ, "WEAVE_API_SOCKET": socks[h]}, capture_output=True)
                if r.returncode == 0: break
                time.sleep(0.1)
            else: raise SystemExit(f"attach {pod}: {r.stderr}")
            pods.append(pod)
        pairs[w] = (h1, h2, pods[0], pods[1], f"10.99.{k}.2")
    def ready(a, ip):
        return subprocess.run(["ip", "netns", "exec", a, "ping", "-c", "1", "-W", "1", ip], capture_output=True).returncode == 0
    for w, (h1, h2, a, b, _) in pairs.items():
        for _ in range(60):
            if ready(a, "10.2.1.2"): break
        else: raise SystemExit(f"{w}: pods do not talk")
    servers = [subprocess.Popen(["ip", "netns", "exec", ns, "iperf3", "-s", "-p", "5201"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for w, (h1, h2, a, b, _) in pairs.items() for ns in (b, h2)]
    procs += servers
    time.sleep(0.5)
    def iperf(ns, ip, extra):
        for _ in range(20):
            r = run("ip", "netns", "exec", ns, "iperf3", "-c", ip, "-p", "5201", "-t", SECS, "-J", *extra, check=False)
            try: v = json.loads(r.stdout)
            except Exception: v = {}
            if "end" in v and "error" not in v: return v
            time.sleep(0.2)
        raise SystemExit(f"iperf3 {ns} {ip}: {r.stdout[-300:]}")
    def rtt(ns, ip):
        r = run("ip", "netns", "exec", ns, "ping", "-q", "-c", "50", "-i", "0.01", ip, check=False)
        line = [l for l in r.stdout.splitlines() if "min/avg/max" in l][0]
        return float(line.split("=")[1].strip().split("/")[1]) * 1000
    def figures(a, ip):
        t = iperf(a, ip, [])["end"]["sum_received"]["bits_per_second"] / 1e9
        u = iperf(a, ip, ["-u", "-l", "64", "-b", "0"])["end"]["sum"]
        pps = (u["packets"] - u["lost_packets"]) / u["seconds"]
        return t, pps / 1e3, rtt(a, ip)
    if os.environ.get("MODE") == "rtt":
        added = {w: [] for w in pairs}
        for r in range(ROUNDS):
            for w in (list(pairs) if r % 2 == 0 else list(reversed(list(pairs)))):
                h1, h2, a, b, ul = pairs[w]
                added[w].append(rtt(a, "10.2.1.2") - rtt(h1, ul))
        q = lambda v, p: sorted(v)[(len(v) - 1) * p // 100]
        for w in pairs:
            print(f"{w}: sleeve RTT added over veth, median of {ROUNDS} rounds +{st.median(added[w]):.0f} us (p25 +{q(added[w],25):.0f}, p75 +{q(added[w],75):.0f})")
        print(f"new/old median {st.median(added['new'])/st.median(added['old']):.2f}x")
        raise SystemExit(0)
    res = {w: {"sleeve": [], "veth": []} for w in pairs}
    for r in range(ROUNDS):
        order = list(pairs) if r % 2 == 0 else list(reversed(list(pairs)))
        for w in order:
            h1, h2, a, b, ul = pairs[w]
            res[w]["veth"].append(figures(h1, ul))
            res[w]["sleeve"].append(figures(a, "10.2.1.2"))
        print(f"round {r+1}: load {open('/proc/loadavg').read().split()[0]} " + "; ".join(
            f"{w}: tcp1 {res[w]['sleeve'][-1][0]:.2f} Gbit/s ({res[w]['sleeve'][-1][0]/res[w]['veth'][-1][0]:.3f}x veth), udp64 {res[w]['sleeve'][-1][1]:.0f} kpps ({res[w]['sleeve'][-1][1]/res[w]['veth'][-1][1]:.3f}x), rtt {res[w]['sleeve'][-1][2]:.0f} us (+{res[w]['sleeve'][-1][2]-res[w]['veth'][-1][2]:.0f})" for w in pairs), flush=True)
    print("medians over", ROUNDS, "rounds:")
    for i, name, unit in ((0, "TCP 1 stream", "Gbit/s"), (1, "UDP 64 B", "kpps"), (2, "ping RTT", "us")):
        m = {w: st.median(x[i] for x in res[w]["sleeve"]) for w in pairs}
        ratio = {w: st.median(s[i] / v[i] for s, v in zip(res[w]["sleeve"], res[w]["veth"])) for w in pairs}
        added = {w: st.median(s[i] - v[i] for s, v in zip(res[w]["sleeve"], res[w]["veth"])) for w in pairs}
        extra = f"; added over veth old +{added['old']:.0f} new +{added['new']:.0f}" if i == 2 else f"; to veth old {ratio['old']:.3f}x new {ratio['new']:.3f}x"
        print(f"  {name}: old {m['old']:.2f} {unit}, new {m['new']:.2f} {unit} (new/old {m['new']/m['old']:.2f}x){extra}")
finally:
    cleanup()
