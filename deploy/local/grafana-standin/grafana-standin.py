#!/usr/bin/python3
"""A stand-in for Grafana on a machine that cannot run Grafana.

It is not Grafana. It serves port 3000 (GF_SERVER_HTTP_PORT) and checks, on
every request, what a Grafana container would be given:

  $GF_PATHS_PROVISIONING/datasources/*.yml|yaml  at least one; each a YAML
      mapping whose `datasources` (if any) is a list of entries with a name
      and a type
  $GF_PATHS_PROVISIONING/dashboards/*.yml|yaml   at least one; each a YAML
      mapping with a `providers` list; a provider's options.path must exist
  $GF_PATHS_DATA/dashboards/*.json and every provider path's *.json
      each a JSON object with a `panels` list

GET /api/health answers 200 {"database":"ok","standin":true} when all of
that holds, otherwise 503 with the reason. GET /api/search lists the
dashboards found (title, uid). GET / says what this is.
"""

import glob
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

PROVISIONING = os.environ.get("GF_PATHS_PROVISIONING", "/etc/grafana/provisioning")
DATA = os.environ.get("GF_PATHS_DATA", "/var/lib/grafana")
PORT = int(os.environ.get("GF_SERVER_HTTP_PORT", "3000"))


def log(level, msg, **fields):
    extra = "".join(f" {k}={json.dumps(v)}" for k, v in fields.items())
    print(f"logger=grafana-standin level={level} msg={json.dumps(msg)}{extra}", flush=True)


def yaml_files(kind):
    directory = os.path.join(PROVISIONING, kind)
    return sorted(glob.glob(os.path.join(directory, "*.yml")) + glob.glob(os.path.join(directory, "*.yaml")))


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    return doc


def check():
    """Returns (problems, found): problems is a list of reasons, empty when all is well."""
    problems = []
    found = {"datasources": [], "providers": [], "dashboards": []}

    files = yaml_files("datasources")
    if not files:
        problems.append(f"no data source files in {PROVISIONING}/datasources")
    for path in files:
        try:
            doc = load_yaml(path)
            entries = doc.get("datasources", [])
            if not isinstance(entries, list):
                raise ValueError(f"{path}: `datasources` is not a list")
            for entry in entries:
                if not isinstance(entry, dict) or not entry.get("name") or not entry.get("type"):
                    raise ValueError(f"{path}: a data source without name or type")
                found["datasources"].append({"name": entry["name"], "type": entry["type"], "file": path})
        except (OSError, ValueError, yaml.YAMLError) as err:
            problems.append(f"data sources: {err}")

    dashboard_dirs = [os.path.join(DATA, "dashboards")]
    files = yaml_files("dashboards")
    if not files:
        problems.append(f"no dashboard provider files in {PROVISIONING}/dashboards")
    for path in files:
        try:
            doc = load_yaml(path)
            providers = doc.get("providers")
            if not isinstance(providers, list) or not providers:
                raise ValueError(f"{path}: no `providers` list")
            for provider in providers:
                if not isinstance(provider, dict):
                    raise ValueError(f"{path}: a provider is not a mapping")
                folder = (provider.get("options") or {}).get("path")
                if folder:
                    if not os.path.isdir(folder):
                        raise ValueError(f"{path}: provider {provider.get('name')!r} path {folder} does not exist")
                    if os.path.realpath(folder) not in map(os.path.realpath, dashboard_dirs):
                        dashboard_dirs.append(folder)
                found["providers"].append({"name": provider.get("name"), "path": folder, "file": path})
        except (OSError, ValueError, yaml.YAMLError) as err:
            problems.append(f"dashboard providers: {err}")

    for directory in dashboard_dirs:
        for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
            try:
                with open(path, encoding="utf-8") as f:
                    doc = json.load(f)
                if not isinstance(doc, dict) or not isinstance(doc.get("panels"), list):
                    raise ValueError(f"{path}: no `panels` list")
                found["dashboards"].append(
                    {"title": doc.get("title"), "uid": doc.get("uid"), "panels": len(doc["panels"]), "file": path}
                )
            except (OSError, ValueError) as err:
                problems.append(f"dashboards: {err}")
    return problems, found


class Handler(BaseHTTPRequestHandler):
    server_version = "grafana-standin"

    def reply(self, status, body, content_type="application/json"):
        data = (json.dumps(body, separators=(",", ":")) if content_type == "application/json" else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/api/health":
            problems, _ = check()
            if problems:
                self.reply(503, {"database": "failing", "standin": True, "reason": "; ".join(problems)})
            else:
                self.reply(200, {"database": "ok", "standin": True})
        elif path == "/api/search":
            _, found = check()
            self.reply(200, [{"title": d["title"], "uid": d["uid"], "type": "dash-db"} for d in found["dashboards"]])
        elif path in ("/", "/login"):
            self.reply(
                200,
                "Grafana stand-in: not Grafana. It checks the provisioning files; see /api/health.\n",
                "text/plain; charset=utf-8",
            )
        else:
            self.reply(404, {"message": "Not found", "standin": True})

    do_HEAD = do_GET

    def log_message(self, fmt, *args):
        # Healthchecks poll often: only failures are logged.
        pass

    def log_error(self, fmt, *args):
        log("error", fmt % args)


def main():
    problems, found = check()
    log("info", "Grafana stand-in starting (this is not Grafana)", port=PORT,
        provisioning=PROVISIONING, data=DATA)
    for ds in found["datasources"]:
        log("info", "data source", **ds)
    for provider in found["providers"]:
        log("info", "dashboard provider", **provider)
    for dashboard in found["dashboards"]:
        log("info", "dashboard", **dashboard)
    for problem in problems:
        log("warn", "provisioning problem", reason=problem)
    if not problems:
        log("info", "provisioning complete",
            datasources=len(found["datasources"]), dashboards=len(found["dashboards"]))

    server = ThreadingHTTPServer(("", PORT), Handler)
    server.daemon_threads = True

    # As PID 1 nothing ends the process on SIGTERM unless it says so.
    def stop(signum, _frame):
        log("info", "stopping", signal=signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log("info", "HTTP Server Listen", address=f"0.0.0.0:{PORT}")
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
