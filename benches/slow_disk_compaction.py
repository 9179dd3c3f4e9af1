#!/usr/bin/env python3
"""A slow disk under a compacting broker: every fsync and fdatasync of the broker held DELAY_MS
(strace fault injection), fsync = "interval", compact_min_bytes at 1 MiB, one client publishing
1 KB retained QoS 1 messages one at a time for 12 s. Prints how many were acknowledged, the
compactions, the slowest PUBACK and how many waited for one or two held syncs, and how long
each compaction held the writer (the broker log's millis= and paused_millis=).

    python3 benches/slow_disk_compaction.py target/release/switchboard 500

Needs strace and paho-mqtt; loopback ports 18860 and 18861; bounded in time."""

import sys, time, subprocess, tempfile, os, re, urllib.request, threading
import paho.mqtt.client as mqtt
binary, delay_ms, port, hport = sys.argv[1], int(sys.argv[2]), 18860, 18861
d = tempfile.mkdtemp(prefix="sb-slow.")
open(f"{d}/sb.toml","w").write(f'[persistence]\ndir = "{d}/state"\nfsync = "interval"\nfsync_interval = "200ms"\ncompact_min_bytes = 1048576\n[http]\nport = {hport}\n')
broker = subprocess.Popen([binary, "-c", f"{d}/sb.toml", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=open(f"{d}/log","w"), env=dict(os.environ, RUST_LOG="info"))
def metric(name):
    body = urllib.request.urlopen(f"http://127.0.0.1:{hport}/metrics").read().decode()
    m = re.search(rf"^{name} (\S+)$", body, re.M); return float(m.group(1))
for _ in range(100):
    try: metric("switchboard_persistence_commits_total"); break
    except Exception: time.sleep(0.1)
strace = subprocess.Popen(["strace","-f","-qq","-o","/dev/null","-p",str(broker.pid),"-e","trace=fsync,fdatasync","-e",f"inject=fsync,fdatasync:delay_enter={delay_ms*1000}"])
time.sleep(1.0)
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gate-app")
acked = threading.Event()
c.on_publish = lambda *a: acked.set()
c.connect("127.0.0.1", port); c.loop_start()
lat = []; payload = b"x"*1000
t_end = time.time() + 12
n = 0
while time.time() < t_end:
    acked.clear(); t = time.perf_counter()
    c.publish("gate/1AB/state", payload + str(n).encode(), qos=1, retain=True)
    acked.wait(30); lat.append(time.perf_counter() - t); n += 1
comp = metric("switchboard_persistence_compactions_total")
strace.kill(); strace.wait(); c.loop_stop(); broker.terminate(); broker.wait()
lat.sort()
print(f"{os.path.basename(binary)}: publishes {n}, compactions {comp:.0f}, slowest PUBACK {lat[-1]*1000:.0f} ms, over {delay_ms*0.8:.0f} ms: {sum(1 for x in lat if x > delay_ms/1000*0.8)}, over {delay_ms*1.6:.0f} ms: {sum(1 for x in lat if x > delay_ms/1000*1.6)}")
print(subprocess.run(["grep","-c","compacted",f"{d}/log"],capture_output=True,text=True).stdout.strip(), "compacted lines;", subprocess.run(["bash","-c",f"grep compacted {d}/log | grep -o millis=[0-9]* | sort | uniq -c | sort -rn | head -3"],capture_output=True,text=True).stdout.replace(chr(10)," ")); subprocess.run(["rm","-rf",d])
