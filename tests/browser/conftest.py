"""The browser tests' harness: a real headless Chromium (Debian's, driven by
Playwright) against the real ingest, aggregator and query that
scripts/lib/browser-tests.sh started, on a topic, database and Redis db of
their own. The script passes their addresses and the token secret in the
environment; tokens are minted with `ingest mint-token`, as the README's
shared-secret mode does.

The form is served by ingest and the catalog by query: behind the front door
(deploy/caddy/Caddyfile) both share one origin, and `/v1/catalog` goes to
query. The form's page here gets the same routing from Playwright: its
`/v1/catalog` is answered by the real query.
"""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

INGEST = os.environ["BROWSER_TESTS_INGEST_URL"]
QUERY = os.environ["BROWSER_TESTS_QUERY_URL"]
BIN = Path(os.environ["BROWSER_TESTS_BIN"])
SCREENSHOTS = Path(os.environ.get("BROWSER_TESTS_SCREENSHOTS", "target/screenshots"))
CHROMIUM = os.environ.get("BROWSER_TESTS_CHROMIUM", "/usr/bin/chromium")
MIN_RESPONSES = 5  # the services' FEEDBACK_MIN_RESPONSES (its default)

DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}

# The catalog the tests read and write: (id, title, term, enrolled, instructors).
CATALOG = [
    ("CS101", "Introduction to Programming", "2026 Autumn", 40, ["prof-li"]),
    ("CS201", "Algorithms and Data Structures", "2026 Autumn", 30, []),
    ("MATH101", "Calculus I", "2026 Autumn", None, []),
    ("HIST210", "Modern Chinese History", "2026 Autumn", 25, ["prof-li"]),
    ("ECON101", "Principles of Economics", "2026 Spring", None, []),
]
INSTRUCTOR = "prof-li"

SEED_COMMENTS = [
    "讲得很清楚，作业量合适。", "Clear lectures; the labs could start earlier.", "", "节奏有点快。",
    "Great examples.", "=SUM(A1) looks like a formula", "", "Office hours helped a lot.",
]


def mint(sub, role):
    """A token as `ingest mint-token` signs it (the services' shared secret)."""
    out = subprocess.run(
        [str(BIN / "ingest"), "mint-token", "--sub", sub, "--role", role, "--ttl-hours", "1"],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


class Api:
    """The services' HTTP API, for seeding and for the figures the pages must show."""

    def __init__(self, request_context):
        self.http = request_context
        self.admin = mint("browser-admin", "admin")
        self.instructor = mint(INSTRUCTOR, "instructor")

    def submit(self, student, course, rating, comment=""):
        body = {"course_id": course, "rating": rating}
        if comment:
            body["comment"] = comment
        res = self.http.post(
            f"{INGEST}/v1/feedback", data=json.dumps(body),
            headers={"Authorization": f"Bearer {mint(student, 'student')}", "Content-Type": "application/json"},
        )
        assert res.status == 202, (res.status, res.text())
        return res.json()

    def get(self, path, token=None):
        res = self.http.get(f"{QUERY}{path}", headers={"Authorization": f"Bearer {token or self.admin}"})
        assert res.ok, (path, res.status, res.text())
        return res

    def json(self, path, token=None):
        return self.get(path, token).json()

    def put_course(self, course_id, title, term, enrolled, instructors):
        body = {"title": title, "term": term, "instructors": instructors}
        if enrolled is not None:
            body["enrolled"] = enrolled
        res = self.http.put(
            f"{QUERY}/v1/courses/{course_id}", data=json.dumps(body),
            headers={"Authorization": f"Bearer {self.admin}", "Content-Type": "application/json"},
        )
        assert res.status == 200, (course_id, res.status, res.text())

    def wait_for(self, what, check, timeout=15.0):
        """Polls `check` until it returns a true value (the aggregator applies asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {what}")
            time.sleep(0.2)

    def wait_responses(self, course, n):
        self.wait_for(f"{course} has {n} responses",
                      lambda: self.json(f"/v1/courses/{course}/stats")["responses"] >= n)


@pytest.fixture(scope="session")
def playwright_session():
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright_session):
    browser = playwright_session.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def api(playwright_session):
    context = playwright_session.request.new_context()
    yield Api(context)
    context.dispose()


@pytest.fixture(scope="session")
def seeded(api):
    """The catalog, 23 students' ratings of CS101 (two pages of comments)
    and 2 of HIST210 (below the threshold for its instructor)."""
    for entry in CATALOG:
        api.put_course(*entry)
    for i in range(23):
        api.submit(f"seed-cs101-{i}", "CS101", 1 + (i * 7) % 5, SEED_COMMENTS[i % len(SEED_COMMENTS)])
    for i in range(2):
        api.submit(f"seed-hist-{i}", "HIST210", 4 + i, "历史课很有意思")
    api.wait_responses("CS101", 23)
    api.wait_responses("HIST210", 2)
    return api


def _context(browser, viewport, lang):
    context = browser.new_context(viewport=viewport, locale="en-US", accept_downloads=True)
    # The page's language is what the student chose last (localStorage), as a returning visitor has it.
    context.add_init_script(f"try {{ localStorage.setItem('feedback.lang', '{lang}'); }} catch (_) {{}}")
    # The front door's routing: the form's /v1/catalog is query's.
    context.route(f"{INGEST}/v1/catalog", lambda route: route.fulfill(response=route.fetch(url=f"{QUERY}/v1/catalog")))
    context.set_default_timeout(10_000)
    return context


@pytest.fixture
def new_page(browser):
    """new_page(viewport=DESKTOP, lang="en") -> a fresh page in a context of its own."""
    contexts = []

    def make(viewport=DESKTOP, lang="en"):
        context = _context(browser, viewport, lang)
        contexts.append(context)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.js_errors = errors
        return page

    yield make
    for context in contexts:
        context.close()


def screenshot(page, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
