#!/usr/bin/env python3
"""Measures the daemon's GET /phrases with 500 phrases of history, and the feed page's load.

Usage: python3 engine/tools/measure_history.py target/release/referee

Writes a 500-phrase history (<data_dir>/phrase-history.jsonl, the persisted format) into a
throw-away data dir, starts `referee serve` on it with a feed token, times 200 sequential
`GET /phrases?limit=500` with curl, then loads the feed page 6 times in headless Chromium
(chromedriver; the first load is a warm-up) and reads when the page had rendered the history
(its `performance.mark("history-rendered")`). Needs curl, chromium and chromium-driver."""
import urllib.error, json, os, random, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

referee = sys.argv[1]
tmp = tempfile.mkdtemp(prefix="phrases-measure-")
data, out = os.path.join(tmp, "data"), os.path.join(tmp, "out")
os.makedirs(data); os.makedirs(out)
random.seed(7)
reasons = [
    "Attack by right: right started the final advance first (1.37 s before the hit, left 0.60 s); in the last 0.8 s right advanced (+2.75 torso lengths), left advanced (+2.66).",
    "Single light: only the left fencer hit, so the left fencer scores.",
    "Double touch, but the actions are simultaneous: ask a human.",
]
now = int(time.time() * 1000)
with open(os.path.join(data, "phrase-history.jsonl"), "w") as f:
    for i in range(500):
        w = random.choice(["Left", "Right", "Uncertain"])
        call = random.choice([None, "left", "right", "no_touch"])
        e = {
            "session_id": f"piste-{i % 8}_bout-{i // 40}", "piste": str(i % 8), "phrase": i,
            "winner": w, "confidence": round(random.uniform(0.5, 1), 3), "sure": w != "Uncertain",
            "reason": random.choice(reasons),
            "evidence": [{"frame": 30 + k, "t": 2.0 + k / 15, "what": "right starts the advance"} for k in range(3)],
            "latency_ms": round(random.uniform(40, 120), 1), "decided_ms": now - (500 - i) * 60000,
            "log_call": None if call is None else {"call": call, "origin": "log", "log_source": "manual_selection",
                                                   "stamp": "2025-10-20 20:59:27", "received_ms": now},
            "page_call": None,
        }
        f.write(json.dumps(e) + "\n")

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

quic, http = free_port(), free_port()
daemon = subprocess.Popen([referee, "serve", "--port", str(quic), "--http-port", str(http),
                           "--set", f"server.data_dir={data}", "--set", f"server.output_dir={out}",
                           "--set", "auth.feed_tokens=tok", "--log-level", "warn"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
base = f"http://127.0.0.1:{http}"
try:
    for _ in range(600):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1); break
        except Exception:
            time.sleep(0.1)
    times = []
    size = 0
    for _ in range(200):
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_total} %{size_download}",
                            "-H", "Authorization: Bearer tok", base + "/phrases?limit=500"],
                           capture_output=True, text=True, check=True)
        t, size = r.stdout.split(); times.append(float(t) * 1000)
    times.sort()
    for path in ["/phrases"]:
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{time_total} %{size_download}",
                            "-H", "Authorization: Bearer tok", base + path], capture_output=True, text=True)
        print(f"GET {path} (default limit 200): {float(r.stdout.split()[0])*1000:.2f} ms, {r.stdout.split()[1]} bytes (one request)")
    print(f"GET /phrases?limit=500 (500 phrases): median {statistics.median(times):.2f} ms, "
          f"p95 {times[int(len(times) * 0.95)]:.2f} ms, {int(size)} bytes, 200 sequential curl requests")

    port = free_port()
    drv = subprocess.Popen(["/usr/bin/chromedriver", f"--port={port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wd = f"http://127.0.0.1:{port}"
    def call(method, path, body=None):
        req = urllib.request.Request(wd + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            return json.load(urllib.request.urlopen(req, timeout=60))
        except urllib.error.HTTPError as e:
            raise SystemExit(f"webdriver {method} {path}: {e.read()[:600]}")
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(wd + "/status", timeout=1); break
            except Exception:
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1100,800",
                         f"--user-data-dir={tmp}/profile"]}}}}
        sid = call("POST", "/session", caps)["value"]["sessionId"]
        # The page marks each render of the history (performance.mark "history-rendered").
        script = ("const m = performance.getEntriesByName('history-rendered');"
                  " return document.querySelectorAll('#history details.phrase').length >= 200 && m.length ?"
                  " [m[0].startTime, performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,"
                  " performance.getEntriesByType('resource').find(r => r.name.includes('/phrases')).responseEnd] : null")
        loads = []
        for i in range(6):
            call("POST", f"/session/{sid}/url", {"url": f"{base}/?token=tok&n={i}"})
            while True:
                v = call("POST", f"/session/{sid}/execute/sync", {"script": script, "args": []})["value"]
                if v is not None:
                    break
                time.sleep(0.01)
            if i > 0:  # the first load warms the browser up
                loads.append(v)
        shown = sorted(l[0] for l in loads)
        dcl = sorted(l[1] for l in loads)
        got = sorted(l[2] for l in loads)
        print(f"page load, newest 200 (the page's default) of 500 phrases rendered at: median {statistics.median(shown):.0f} ms "
              f"(min {shown[0]:.0f}, max {shown[-1]:.0f}); DOMContentLoaded median {statistics.median(dcl):.0f} ms, /phrases answered at {statistics.median(got):.0f} ms (medians of 5 loads, ms from navigation start)")
        call("DELETE", f"/session/{sid}")
    finally:
        drv.kill(); drv.wait()
finally:
    daemon.send_signal(signal.SIGINT)
    try:
        daemon.wait(timeout=20)
    except subprocess.TimeoutExpired:
        daemon.kill()
    shutil.rmtree(tmp, ignore_errors=True)
