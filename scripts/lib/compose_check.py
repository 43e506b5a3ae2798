#!/usr/bin/env python3
"""Runs the compose deployment for real and checks it end to end.

Called by scripts/compose-check.sh once the local images exist. It brings
the whole project up (compose.yaml with deploy/local/compose.local.yaml, which
swaps the public images for the local stand-ins), then, through the HTTPS
front door: posts feedback to both ingest replicas, reads the numbers back
through query, scales the aggregator to 3 and back to 1 with the counts still
exact; checks the processes run as non-root and the services reach MariaDB
as a user without global privileges; asks the live Prometheus for its targets
and rules, and evaluates every PromQL expression of the Grafana dashboard and
of the alert rules. Whatever happens, it ends with `down -v`.
"""

import json
import os
import random
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "var" / "compose-check"
PROJECT = os.environ.get("COMPOSE_CHECK_PROJECT", "feedback-check")
FILES = ["-f", "compose.yaml", "-f", "deploy/local/compose.local.yaml"]
# Host ports of this run: away from a real deployment's 443, 9090 and 3000.
PORTS = {
    "FEEDBACK_HTTPS_PORT": "18443",
    "FEEDBACK_HTTP_PORT": "18080",
    "FEEDBACK_PROMETHEUS_PORT": "19090",
    "FEEDBACK_GRAFANA_PORT": "13000",
}
FRONT = f"https://localhost:{PORTS['FEEDBACK_HTTPS_PORT']}"
PROMETHEUS = f"http://127.0.0.1:{PORTS['FEEDBACK_PROMETHEUS_PORT']}"
GRAFANA = f"http://127.0.0.1:{PORTS['FEEDBACK_GRAFANA_PORT']}"
COURSES = ["CHK101", "CHK202", "CHK303"]

started = time.monotonic()
timings = []


def say(message):
    print(f"[compose-check {time.monotonic() - started:6.1f}s] {message}", flush=True)


class Step:
    """Prints a step's start and its time; the times end up in the summary."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.at = time.monotonic()
        say(f"==> {self.name}")

    def __exit__(self, kind, value, traceback):
        took = time.monotonic() - self.at
        timings.append((self.name, took))
        if kind is None:
            say(f"    ok ({took:.1f}s)")


def compose(*args, capture=False, timeout=900):
    command = ["docker", "compose", "-p", PROJECT, "--env-file", str(WORK / ".env"), *FILES, *args]
    done = subprocess.run(
        command,
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}")
    return done.stdout if capture else None


def env_value(name):
    for line in (WORK / ".env").read_text().splitlines():
        if line.startswith(name + "="):
            return line.split("=", 1)[1]
    raise SystemExit(f"{name} not in {WORK / '.env'}")


def http(method, url, token=None, body=None, context=None, headers=None):
    """(status, headers, body bytes) of one request; never raises on a 4xx or 5xx."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=15, context=context) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def eventually(what, check, limit=90, every=1.0):
    """check() until it returns something truthy, or fail after `limit` seconds."""
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, KeyError) as error:
            last = error
        time.sleep(every)
    raise SystemExit(f"{what}: not within {limit}s (last: {last})")


def prom(query):
    url = f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    status, _, body = http("GET", url)
    answer = json.loads(body)
    if status != 200 or answer.get("status") != "success":
        raise SystemExit(f"Prometheus refused {query!r}: {status} {answer.get('error')}")
    return answer["data"]["result"]


def prom_api(path):
    status, _, body = http("GET", f"{PROMETHEUS}{path}")
    if status != 200:
        raise SystemExit(f"Prometheus {path}: {status}")
    return json.loads(body)["data"]


class Load:
    """Submissions sent through the front door, and what they must add up to."""

    def __init__(self, context, tokens):
        self.context = context
        self.tokens = tokens
        self.current = {}  # (course, student) -> the latest rating (the counting rule)
        self.accepted = 0

    def post(self, count):
        statuses = {}
        for _ in range(count):
            student = random.choice(list(self.tokens))
            course = random.choice(COURSES)
            rating = random.randint(1, 5)
            status, _, body = http(
                "POST",
                f"{FRONT}/v1/feedback",
                token=self.tokens[student],
                body={"course_id": course, "rating": rating, "comment": "compose check 检查"},
                context=self.context,
            )
            statuses[status] = statuses.get(status, 0) + 1
            if status != 202 or json.loads(body).get("status") != "accepted":
                raise SystemExit(f"a submission answered {status}: {body[:300]!r}")
            self.current[(course, student)] = rating
            self.accepted += 1
        say(f"    {count} submissions: {statuses}")

    def expected(self, course):
        ratings = [r for (c, _), r in self.current.items() if c == course]
        return len(ratings), sum(ratings)

    def wait_exact(self, admin, limit=120):
        def exact():
            for course in COURSES:
                status, _, body = http(
                    "GET", f"{FRONT}/v1/courses/{course}/stats", token=admin, context=self.context
                )
                stats = json.loads(body)
                if status != 200:
                    raise SystemExit(f"stats of {course}: {status} {stats}")
                if (stats["responses"], stats["rating_sum"]) != self.expected(course):
                    return None
            return True

        eventually("query's numbers equal the counting rule", exact, limit=limit)
        summary = ", ".join(f"{c} {self.expected(c)}" for c in COURSES)
        say(f"    exact through query: (responses, rating_sum) {summary}")


def container_ids(service=None):
    args = ["ps", "-q"] + ([service] if service else [])
    return [line for line in compose(*args, capture=True).split() if line]


def inspect(container, template):
    return subprocess.run(
        ["docker", "inspect", "-f", template, container], text=True, capture_output=True, check=True
    ).stdout.strip()


def check_non_root():
    for container in container_ids():
        name = inspect(container, "{{.Name}}").lstrip("/")
        pid = inspect(container, "{{.State.Pid}}")
        uid = next(
            line.split()[1]
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("Uid:")
        )
        if uid == "0":
            raise SystemExit(f"{name} runs as root")
        say(f"    {name}: uid {uid}")


def check_database_user():
    password = env_value("FEEDBACK_DB_PASSWORD")
    out = compose(
        "exec", "-T", "mariadb", "mariadb", "-h", "127.0.0.1", "-u", "feedback", f"-p{password}",
        "-N", "-e", "SHOW GRANTS", capture=True,
    )
    grants = [line for line in out.splitlines() if line.strip()]
    say(f"    the services' user: {grants}")
    for grant in grants:
        if "ON *.*" in grant and "USAGE" not in grant:
            raise SystemExit(f"the application user has a global privilege: {grant}")
        if "ALL PRIVILEGES" in grant or "GRANT OPTION" in grant:
            raise SystemExit(f"the application user has too much: {grant}")
    return password


def history_rows(password):
    out = compose(
        "exec", "-T", "mariadb", "mariadb", "-h", "127.0.0.1", "-u", "feedback", f"-p{password}",
        "-N", "feedback", "-e",
        "SELECT COUNT(*) FROM feedback_events WHERE course_id LIKE 'CHK%'",
        capture=True,
    )
    return int(out.strip())


def targets_up(jobs):
    """Every active target up, and `jobs` ({job: replicas}) exactly as expected."""
    active = prom_api("/api/v1/targets?state=active")["activeTargets"]
    count = {}
    for target in active:
        if target["health"] != "up":
            return None
        job = target["labels"]["job"]
        count[job] = count.get(job, 0) + 1
    return count if all(count.get(job) == n for job, n in jobs.items()) else None


def group_lag_is_zero():
    series = prom("sum(aggregator_consumer_lag)")
    return bool(series) and float(series[0]["value"][1]) == 0


def expressions():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lib" / "promql.py")],
        text=True, capture_output=True, check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    env = WORK / ".env"
    env.unlink(missing_ok=True)
    subprocess.run([str(ROOT / "scripts" / "compose-env.sh"), str(env)], check=True)
    with env.open("a") as f:
        for name, value in PORTS.items():
            f.write(f"{name}={value}\n")

    try:
        with Step("docker compose up --wait (the whole project, two ingest replicas)"):
            compose("up", "-d", "--wait", "--wait-timeout", "600", "--pull", "never")
            compose("ps", "--format", "table {{.Service}}\t{{.Status}}")

        with Step("the front door: HTTPS from the local certificate authority"):
            ca = WORK / "root.crt"
            compose("cp", "proxy:/data/caddy/pki/authorities/local/root.crt", str(ca))
            context = ssl.create_default_context(cafile=str(ca))
            status, headers, body = http("GET", f"{FRONT}/", context=context)
            assert status == 200 and b'src="/form.js"' in body, (status, body[:200])
            # The form's script comes from ingest through the same door.
            status, _, body = http("GET", f"{FRONT}/form.js", context=context)
            assert status == 200 and b"/v1/feedback" in body, (status, body[:200])
            status, _, body = http("GET", f"{FRONT}/admin", context=context)
            assert status == 200 and b"<html" in body.lower(), (status, body[:200])
            for internal in ["/metrics", "/readyz"]:
                status, _, _ = http("GET", f"{FRONT}{internal}", context=context)
                assert status == 404, f"{internal} is public: {status}"
            proxy = container_ids("proxy")[0]
            address = inspect(proxy, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
            for replica in container_ids("ingest"):
                env_list = inspect(replica, "{{json .Config.Env}}")
                assert f"FEEDBACK_TRUSTED_PROXIES={address}" in json.loads(env_list), (
                    f"ingest does not trust the front door's address {address}"
                )
            say(f"    form, dashboard, /metrics and /readyz hidden; ingest trusts {address}")

        with Step("tokens from ingest's mint-token"):
            mint = lambda sub, role: compose(  # noqa: E731
                "exec", "-T", "ingest", "ingest", "mint-token", "--sub", sub, "--role", role,
                capture=True,
            ).strip()
            admin = mint("check-admin", "admin")
            tokens = {f"check-student-{i}": mint(f"check-student-{i}", "student") for i in range(12)}

        load = Load(context, tokens)
        with Step("feedback through the front door, read back through query"):
            load.post(60)
            load.wait_exact(admin)

        with Step("both ingest replicas took submissions (Prometheus, per instance)"):
            def per_replica():
                series = prom(
                    'sum by (instance) (http_requests_total{job="ingest",route="/v1/feedback",status="202"})'
                )
                counts = {s["metric"]["instance"]: float(s["value"][1]) for s in series}
                return counts if len(counts) == 2 and all(v > 0 for v in counts.values()) else None

            counts = eventually("two ingest replicas with 202s", per_replica, limit=60)
            say(f"    202s by replica: {counts}")

        with Step("scale the aggregator to 3, counts exact"):
            compose("up", "-d", "--wait", "--no-recreate", "--scale", "aggregator=3")
            assert len(container_ids("aggregator")) == 3
            eventually("3 aggregators up in Prometheus", lambda: targets_up({"aggregator": 3}), limit=90)
            load.post(60)
            load.wait_exact(admin)

        with Step("scale the aggregator back to 1, counts exact"):
            compose("up", "-d", "--wait", "--no-recreate", "--scale", "aggregator=1")
            assert len(container_ids("aggregator")) == 1
            load.post(60)
            load.wait_exact(admin)
            eventually("the group's lag summed over partitions back to 0", group_lag_is_zero, limit=60)
            say("    consumer lag summed over partitions: 0")

        with Step("one history row per accepted submission; the services' database user"):
            password = check_database_user()
            rows = history_rows(password)
            assert rows == load.accepted, f"{rows} history rows for {load.accepted} accepted"
            say(f"    {rows} history rows for {load.accepted} accepted submissions")

        with Step("every process runs as non-root"):
            check_non_root()

        with Step("Prometheus: every target up, the rules loaded"):
            jobs = {"ingest": 2, "aggregator": 1, "query": 1, "prometheus": 1}
            seen = eventually("every target up", lambda: targets_up(jobs), limit=90)
            say(f"    targets up by job: {seen}")
            groups = prom_api("/api/v1/rules")["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            unhealthy = [r["name"] for r in rules if r.get("health") not in ("ok", "unknown")]
            assert not unhealthy, f"rules failing: {unhealthy}"
            wanted = [e for e in expressions() if e["source"].startswith("rule:")]
            assert len(rules) == len(wanted), f"{len(rules)} rules loaded, {len(wanted)} in the files"
            firing = [r["name"] for r in rules if r.get("state") == "firing"]
            say(f"    {len(rules)} rules loaded in {len(groups)} groups; firing now: {firing or 'none'}")

        with Step("every PromQL expression of the dashboard and the rules against the live Prometheus"):
            empty = []
            all_exprs = expressions()
            for entry in all_exprs:
                result = prom(entry["expr"])
                if entry["needs_data"] and not result:
                    empty.append(entry["source"])
            assert not empty, f"dashboard queries without data: {empty}"
            panels = sum(1 for e in all_exprs if e["needs_data"])
            say(f"    {len(all_exprs)} expressions parsed; all {panels} dashboard queries returned data")

        with Step("Grafana's stand-in has the provisioning"):
            status, _, body = http("GET", f"{GRAFANA}/api/health")
            assert status == 200, (status, body)
            say(f"    {body.decode()[:200]}")

        with Step("what the deployment uses"):
            out = subprocess.run(
                ["docker", "stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}"],
                text=True, capture_output=True, check=True,
            ).stdout
            for line in sorted(out.splitlines()):
                if line.startswith(PROJECT):
                    say(f"    {line}")
        ok = True
    except BaseException:
        ok = False
        logs = WORK / "logs"
        logs.mkdir(exist_ok=True)
        say(f"FAILED: the services' logs are in {logs}")
        subprocess.run(
            ["docker", "compose", "-p", PROJECT, "--env-file", str(env), *FILES, "ps", "-a"],
            cwd=ROOT,
        )
        with (logs / "compose.log").open("w") as f:
            subprocess.run(
                ["docker", "compose", "-p", PROJECT, "--env-file", str(env), *FILES,
                 "logs", "--no-color", "--tail", "300"],
                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
            )
        raise
    finally:
        with Step("docker compose down -v"):
            compose("down", "-v", "--remove-orphans", "--timeout", "20")
        say("timings: " + "; ".join(f"{name.split(' (')[0]} {took:.0f}s" for name, took in timings))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
