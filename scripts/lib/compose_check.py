#!/usr/bin/env python3
"""Runs the compose deployment for real and checks it end to end.

Called by scripts/compose-check.sh once the local images exist. It brings
the whole project up (compose.yaml with deploy/local/compose.local.yaml, which
swaps the public images for the local stand-ins), then, through the HTTPS
front door at https://feedback.localhost:18443: signs in at the bundled
Keycloak the way the pages do (authorization code with PKCE, through its
login form) as students and the admin, and checks what the services make of
those tokens (accepted, 403 for the wrong role, 401 for a forged one) and
that each replica holds the provider's keys; posts feedback to both ingest
replicas, reads the numbers back through query, scales the aggregator to 3
and back to 1 with the counts still exact; checks the processes run as
non-root and the services reach MariaDB as a user without global privileges;
asks the live Prometheus for its targets and rules, and evaluates every
PromQL expression of the Grafana dashboard and of the alert rules. Whatever
happens, it ends with `down -v`.
"""

import base64
import hashlib
import html
import http.client as httpclient
import json
import os
import random
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
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
# The trial's site name: inside the network it leads to the front door (the
# proxy's alias); on the host nothing resolves it, so every request to it is
# dialled to 127.0.0.1 with the name kept for SNI, Host and the certificate,
# as a browser does for *.localhost.
SITE = "feedback.localhost"
FRONT = f"https://{SITE}:{PORTS['FEEDBACK_HTTPS_PORT']}"
ISSUER = f"{FRONT}/auth/realms/feedback"
AUDIENCE = "feedback-api"
PAGES_CLIENT = "feedback-pages"
# The form's address: the redirect URI the form sends (origin and path).
REDIRECT_URI = f"{FRONT}/"
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


def http(method, url, token=None, body=None, context=None, headers=None, form=None):
    """(status, headers, body bytes) of one request, redirects not followed;
    never raises on a 4xx or 5xx. `body` goes as JSON, `form` as a form."""
    parts = urllib.parse.urlsplit(url)
    sent = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    if token:
        sent["Authorization"] = f"Bearer {token}"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme == "https":
        conn = httpclient.HTTPSConnection(parts.hostname, port, timeout=15, context=context)
    else:
        conn = httpclient.HTTPConnection(parts.hostname, port, timeout=15)
    if parts.hostname == SITE:
        # http.client dials through this attribute; TLS still checks SITE.
        conn._create_connection = lambda _address, *rest: socket.create_connection(
            ("127.0.0.1", port), *rest
        )
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, target, body=data, headers=sent)
        answer = conn.getresponse()
        return answer.status, answer.msg, answer.read()
    finally:
        conn.close()


def eventually(what, check, limit=90, every=1.0):
    """check() until it returns something truthy, or fail after `limit` seconds."""
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, KeyError, httpclient.HTTPException) as error:
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


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def claims(token):
    """The payload of a JWT, unverified (the services verify; this only reads)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def cookies_of(headers, jar):
    for line in headers.get_all("Set-Cookie") or []:
        name, _, rest = line.partition("=")
        jar[name.strip()] = rest.split(";", 1)[0]
    return "; ".join(f"{k}={v}" for k, v in jar.items())


class Session:
    """One user signed in through the front door as the pages do it: the
    authorization-code flow with PKCE for `feedback-pages`, through
    Keycloak's own login form; the access token renewed with the refresh
    token before it expires (5 minutes in the realm)."""

    def __init__(self, context, discovery, username, password):
        self.context = context
        self.discovery = discovery
        self.username = username
        self.password = password
        self.tokens = None
        self.expires_at = 0.0
        self.sign_in()

    def sign_in(self):
        verifier = b64url(os.urandom(32))
        challenge = b64url(hashlib.sha256(verifier.encode()).digest())
        state = b64url(os.urandom(16))
        query = urllib.parse.urlencode({
            "response_type": "code",
            "client_id": PAGES_CLIENT,
            "redirect_uri": REDIRECT_URI,
            "scope": "openid",
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        })
        jar = {}
        status, headers, body = http(
            "GET", f"{self.discovery['authorization_endpoint']}?{query}", context=self.context
        )
        if status != 200:
            raise SystemExit(f"{self.username}: the login page answered {status}: {body[:300]!r}")
        form = re.search(rb'<form[^>]*\bid="kc-form-login"[^>]*>', body)
        action = re.search(rb'\baction="([^"]+)"', form.group(0)) if form else None
        if not action:
            raise SystemExit(f"{self.username}: no kc-form-login form on the login page")
        action = html.unescape(action.group(1).decode())
        if not action.startswith(f"{ISSUER}/"):
            raise SystemExit(f"the login form posts to {action}, not through the front door")
        status, headers, body = http(
            "POST", action, context=self.context,
            headers={"Cookie": cookies_of(headers, jar)},
            form={"username": self.username, "password": self.password, "credentialId": ""},
        )
        location = headers.get("Location", "")
        if status != 302 or not location.startswith(REDIRECT_URI + "?"):
            raise SystemExit(f"{self.username}: signing in answered {status} {location!r}: {body[:300]!r}")
        answer = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
        assert answer.get("state") == [state], f"state {answer.get('state')} is not {state}"
        # RFC 9207: the provider names itself in the answer.
        assert answer.get("iss") == [ISSUER], f"the answer's iss {answer.get('iss')}"
        self.exchange({
            "grant_type": "authorization_code",
            "code": answer["code"][0],
            "redirect_uri": REDIRECT_URI,
            "client_id": PAGES_CLIENT,
            "code_verifier": verifier,
        })

    def exchange(self, form):
        at = time.time()
        status, _, body = http(
            "POST", self.discovery["token_endpoint"], context=self.context, form=form,
            headers={"Origin": FRONT},
        )
        if status != 200:
            raise SystemExit(f"{self.username}: the token endpoint answered {status}: {body[:300]!r}")
        self.tokens = json.loads(body)
        self.expires_at = at + self.tokens["expires_in"]

    def token(self):
        if time.time() > self.expires_at - 60:
            self.exchange({
                "grant_type": "refresh_token",
                "refresh_token": self.tokens["refresh_token"],
                "client_id": PAGES_CLIENT,
            })
        return self.tokens["access_token"]


class Load:
    """Submissions sent through the front door, and what they must add up to."""

    def __init__(self, context, sessions):
        self.context = context
        self.sessions = sessions
        self.current = {}  # (course, student) -> the latest rating (the counting rule)
        self.accepted = 0

    def post(self, count):
        statuses = {}
        for _ in range(count):
            student = random.choice(list(self.sessions))
            course = random.choice(COURSES)
            rating = random.randint(1, 5)
            status, _, body = http(
                "POST",
                f"{FRONT}/v1/feedback",
                token=self.sessions[student].token(),
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
                    "GET", f"{FRONT}/v1/courses/{course}/stats", token=admin.token(),
                    context=self.context,
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
    # The ports of this run as settings of compose-env.sh, which derives
    # FEEDBACK_PUBLIC_URL from them; nothing else of the caller's environment.
    settings = {"PATH": os.environ["PATH"], **PORTS}
    subprocess.run([str(ROOT / "scripts" / "compose-env.sh"), str(env)], check=True, env=settings)
    assert env_value("FEEDBACK_PUBLIC_URL") == FRONT, env_value("FEEDBACK_PUBLIC_URL")

    try:
        with Step("docker compose up --wait (the whole project, two ingest replicas)"):
            compose("up", "-d", "--wait", "--wait-timeout", "600", "--pull", "never")
            compose("ps", "--format", "table {{.Service}}\t{{.Status}}")
            # Keycloak's first start: its build, its schema in MariaDB, the realm import.
            log = compose("logs", "--no-color", "--no-log-prefix", "keycloak", capture=True)
            boot = re.search(r"^(\S+ \S+),\d+ .*started in ([0-9.]+s)", log, re.M)
            imported = "Realm 'feedback' imported" in log
            assert boot and imported, "Keycloak did not start, or without importing the realm"
            # From the container's start (the build included) to listening;
            # Keycloak logs in the container's time zone, UTC.
            container = container_ids("keycloak")[0]
            since = inspect(container, "{{.State.StartedAt}}")[:19]
            took = time.mktime(time.strptime(boot.group(1), "%Y-%m-%d %H:%M:%S")) - time.mktime(
                time.strptime(since, "%Y-%m-%dT%H:%M:%S")
            )
            say(f"    keycloak: listening {took:.0f}s after its container started "
                f"(its build, then the server in {boot.group(2)}: schema, realm import)")

        with Step("the front door: HTTPS from the local certificate authority"):
            ca = WORK / "root.crt"
            compose("cp", "proxy:/data/caddy/pki/authorities/local/root.crt", str(ca))
            context = ssl.create_default_context(cafile=str(ca))
            status, headers, body = http("GET", f"{FRONT}/", context=context)
            assert status == 200 and b'src="/form.js"' in body, (status, body[:200])
            form_page = body
            status, _, body = http("GET", f"{FRONT}/admin", context=context)
            assert status == 200 and b'src="/admin.js"' in body, (status, body[:200])
            # Each page's files, from the service that serves them: form.js
            # and form.css from ingest (query has neither), the rest from query.
            for path, holds in [
                ("/form.js", b"/v1/feedback"), ("/form.css", b"{"), ("/oidc.js", b"openid-configuration"),
                ("/admin.js", b"/v1/"), ("/admin.css", b"{"),
            ]:
                status, headers, body_of = http("GET", f"{FRONT}{path}", context=context)
                assert status == 200 and holds in body_of, f"{path}: {status} {body_of[:100]!r}"
            # Both pages sign in at the bundled provider's public address.
            for page in (form_page, body):
                config = re.search(rb'<meta name="feedback-auth" content="([^"]*)"', page)
                config = json.loads(html.unescape(config.group(1).decode()))
                assert config == {"mode": "oidc", "issuer": ISSUER, "client_id": PAGES_CLIENT}, config
            for internal in ["/metrics", "/readyz"]:
                status, _, _ = http("GET", f"{FRONT}{internal}", context=context)
                assert status == 404, f"{internal} is public: {status}"
            # Keycloak's administration is not public, in any spelling.
            for hidden in [
                "/auth/", "/auth/admin/", "/auth/admin/master/console/",
                "/auth/admin/realms/feedback/users", "/auth/health/ready", "/auth/metrics",
                "/auth/realms/master/.well-known/openid-configuration",
                "/auth/realms/MASTER/.well-known/openid-configuration",
                "/auth/realms/%6Daster/.well-known/openid-configuration",
                "/auth//realms/master/.well-known/openid-configuration",
                "/auth/realms/feedback/../master/.well-known/openid-configuration",
                "/auth/realms/feedback/%2e%2e/master/.well-known/openid-configuration",
                "/auth/realms/feedback/..%2fmaster/.well-known/openid-configuration",
                "/auth/realms/feedback/../../admin/",
                "/auth/realms/master/protocol/openid-connect/token",
            ]:
                status, _, _ = http("GET", f"{FRONT}{hidden}", context=context)
                assert status == 404, f"{hidden} is public: {status}"
            # Port 80 sends browsers to the published HTTPS port.
            status, headers, _ = http(
                "GET", f"http://{SITE}:{PORTS['FEEDBACK_HTTP_PORT']}/admin?x=1"
            )
            assert status in (301, 308) and headers["Location"] == f"{FRONT}/admin?x=1", (
                status, headers["Location"],
            )
            proxy = container_ids("proxy")[0]
            address = inspect(proxy, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
            for replica in container_ids("ingest"):
                env_list = inspect(replica, "{{json .Config.Env}}")
                assert f"FEEDBACK_TRUSTED_PROXIES={address}" in json.loads(env_list), (
                    f"ingest does not trust the front door's address {address}"
                )
            say(f"    form, dashboard and their files; /metrics, /readyz and Keycloak's "
                f"administration hidden; port 80 redirects; ingest trusts {address}")

        with Step("each ingest replica and query hold the provider's keys (/readyz inside)"):
            readers = [(c, 8080) for c in container_ids("ingest")] + [
                (c, 8082) for c in container_ids("query")
            ]
            assert len(readers) == 3, readers

            def identity_up():
                for container, port in readers:
                    out = subprocess.run(
                        ["docker", "exec", container, "curl", "-sS", f"http://127.0.0.1:{port}/readyz"],
                        text=True, capture_output=True, timeout=20,
                    ).stdout
                    identity = json.loads(out)["checks"]["identity"]
                    if identity.get("state") != "up":
                        return None
                    assert identity["issuer"] == ISSUER, identity
                return identity

            identity = eventually("checks.identity.state up everywhere", identity_up, limit=120)
            say(f"    {len(readers)} replicas: {identity}")

        with Step("sign-in through the front door (authorization code with PKCE, Keycloak's form)"):
            status, _, body = http("GET", f"{ISSUER}/.well-known/openid-configuration", context=context)
            assert status == 200, (status, body[:200])
            discovery = json.loads(body)
            assert discovery["issuer"] == ISSUER, discovery["issuer"]
            for endpoint in ["authorization_endpoint", "token_endpoint", "jwks_uri"]:
                assert discovery[endpoint].startswith(f"{ISSUER}/"), (endpoint, discovery[endpoint])
            at = time.monotonic()
            admin = Session(context, discovery, "admin", "admin")
            student = Session(context, discovery, "student", "student")
            took = time.monotonic() - at
            # The load's students: `student` and eleven of the sample students.
            sessions = {"student": student}
            for i in range(1, 12):
                sessions[f"sample{i:02}"] = Session(context, discovery, f"sample{i:02}", "sample")
            for session, role in [(admin, "admin"), (student, "student")]:
                seen = claims(session.token())
                assert seen["iss"] == ISSUER, seen["iss"]
                audience = seen["aud"] if isinstance(seen["aud"], list) else [seen["aud"]]
                assert AUDIENCE in audience, seen["aud"]
                assert seen["azp"] == PAGES_CLIENT and role in seen["roles"], seen
            say(f"    {len(sessions) + 1} users signed in; admin and student in {took:.1f}s; "
                f"iss {ISSUER}, aud {AUDIENCE}")

        with Step("Keycloak administered from inside its container (kcadm.sh)"):
            out = compose(
                "exec", "-T", "keycloak", "bash", "-c",
                'export HOME=/tmp; kc=/opt/keycloak/bin/kcadm.sh; '
                '$kc config credentials --server http://localhost:8080/auth --realm master '
                '--user admin --password "$KEYCLOAK_ADMIN_PASSWORD" >/dev/null 2>&1 && '
                '$kc get users/count -r feedback',
                capture=True,
            ).strip()
            assert out == "27", f"users in the realm: {out!r}"
            say(f"    realm feedback: {out} users (3 demo users, 24 sample students)")

        with Step("what the services make of those tokens"):
            course = COURSES[0]
            status, _, body = http(
                "POST", f"{FRONT}/v1/feedback", token=student.token(), context=context,
                body={"course_id": course, "rating": 4, "comment": "signed in"},
            )
            assert status == 202, (status, body[:300])
            status, _, body = http(
                "GET", f"{FRONT}/v1/courses/{course}/stats", token=student.token(), context=context
            )
            assert status == 403, f"a student read the stats: {status} {body[:200]!r}"
            status, _, body = http(
                "POST", f"{FRONT}/v1/feedback", token=admin.token(), context=context,
                body={"course_id": course, "rating": 4},
            )
            assert status == 403, f"the admin submitted feedback: {status} {body[:200]!r}"
            forged = ".".join([
                b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "forged"}).encode()),
                b64url(json.dumps({**claims(student.token()), "roles": ["admin"]}).encode()),
                b64url(os.urandom(256)),
            ])
            for token, where in [("garbage", "/v1/feedback"), (forged, f"/v1/courses/{course}/stats")]:
                method = "POST" if where == "/v1/feedback" else "GET"
                status, _, body = http(
                    method, f"{FRONT}{where}", token=token, context=context,
                    body={"course_id": course, "rating": 4} if method == "POST" else None,
                )
                assert status == 401 and json.loads(body)["error"]["code"] == "invalid_token", (
                    status, body[:200],
                )
            say("    student 202 on /v1/feedback, 403 on stats; admin 403 on /v1/feedback; "
                "garbage and a forged key 401 invalid_token")

        load = Load(context, sessions)
        # The signed-in student's one rating above counts too.
        load.current[(course, "student")] = 4
        load.accepted += 1
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
