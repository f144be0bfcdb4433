"""Checks the deployment files against the real server.

- every YAML file parses; kustomization resources and generator files exist;
- the StatefulSet's container ports are the Service's target ports, it has a
  volumeClaimTemplate mounted at the server's data dir, and the ServiceMonitor
  scrapes the Service's metrics port;
- every `name = value` line of k8s/wavekv.conf is a flag the server accepts
  (the server is started with --config pointing at a copy of it);
- every metric the Grafana dashboard queries is exported by a running server
  (started on 127.0.0.1 with ports chosen at run time, scraped over HTTP).
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
RUNFILES = os.path.join(os.environ.get("TEST_SRCDIR", ""), "wavekv")
SERVER = os.path.join(RUNFILES, "transport", "wavekv-server")


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


class Server:
    """The real wavekv-server as a child process."""

    def __init__(self, extra_args):
        self.dir = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        self.ready = os.path.join(self.dir, "ready.json")
        self.proc = subprocess.Popen(
            [SERVER, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
             "--data_dir=" + os.path.join(self.dir, "data"),
             "--ready_file=" + self.ready] + extra_args,
            stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 30
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: " + self.proc.stderr.read())
            if time.time() > deadline:
                self.proc.kill()
                raise RuntimeError("server not ready in 30 s")
            time.sleep(0.05)
        with open(self.ready) as f:
            self.ports = json.load(f)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


class DeployTest(unittest.TestCase):
    def setUp(self):
        self.kust = yaml.safe_load(open(os.path.join(HERE, "kustomization.yaml")))
        self.docs = {}
        for res in self.kust["resources"]:
            path = os.path.join(HERE, res)
            self.assertTrue(os.path.exists(path), res)
            for d in load_all(path):
                self.docs[d["kind"]] = d

    def test_generators_reference_existing_files(self):
        for gen in self.kust["configMapGenerator"]:
            for f in gen["files"]:
                self.assertTrue(os.path.exists(os.path.join(HERE, f)), f)

    def test_statefulset_service_and_monitor_agree(self):
        sts, svc, mon = (self.docs["StatefulSet"], self.docs["Service"],
                         self.docs["ServiceMonitor"])
        self.assertEqual(svc["spec"].get("clusterIP"), "None")  # headless
        self.assertEqual(sts["spec"]["serviceName"], svc["metadata"]["name"])
        container = sts["spec"]["template"]["spec"]["containers"][0]
        names = {p["name"]: p["containerPort"] for p in container["ports"]}
        for port in svc["spec"]["ports"]:
            self.assertIn(port["targetPort"], names)
        self.assertIn(mon["spec"]["endpoints"][0]["port"],
                      [p["name"] for p in svc["spec"]["ports"]])
        claims = [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        self.assertIn("data", claims)
        self.assertEqual(mounts["data"], "/data")
        self.assertEqual(
            sts["spec"]["selector"]["matchLabels"], svc["spec"]["selector"])

    def test_config_file_is_accepted_by_server(self):
        conf = open(os.path.join(HERE, "k8s", "wavekv.conf")).read()
        # The tokens file and memory budget of production do not exist here:
        # keep every key, point the tokens file at an empty one.
        tmp = tempfile.mkdtemp(dir=os.environ.get("TEST_TMPDIR"))
        tokens = os.path.join(tmp, "tokens")
        open(tokens, "w").write("t0ken tenant-a\n")
        conf = re.sub(r"(?m)^tokens_file\s*=.*$", "tokens_file = " + tokens, conf)
        conf = re.sub(r"(?m)^memory_budget\s*=.*$", "memory_budget = 64MiB", conf)
        path = os.path.join(tmp, "wavekv.conf")
        open(path, "w").write(conf)
        server = Server(["--config=" + path])
        self.assertEqual(server.stop(), 0)

    def test_dashboard_metrics_exist(self):
        dash = json.load(open(os.path.join(HERE, "grafana", "wavekv-dashboard.json")))
        exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
        wanted = set()
        for e in exprs:
            for m in re.findall(r"\b(wavekv_[a-z_]+)", e):
                wanted.add(re.sub(r"_(bucket|sum|count)$", "", m))
        server = Server([])
        try:
            url = "http://127.0.0.1:%d/metrics" % server.ports["metrics_port"]
            text = urllib.request.urlopen(url, timeout=10).read().decode()
        finally:
            self.assertEqual(server.stop(), 0)
        exported = set(re.findall(r"(?m)^# TYPE (wavekv_[a-z_]+) ", text))
        self.assertTrue(wanted, "dashboard queries no wavekv metric")
        self.assertEqual(sorted(wanted - exported), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
