"""The dashboard (GET /admin on query) in a real browser."""

import re

from axe_playwright_python.sync_playwright import Axe
from conftest import DESKTOP, MIN_RESPONSES, PHONE, QUERY, screenshot
from playwright.sync_api import expect

ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC$")


def open_dashboard(page, token, course=None):
    page.goto(f"{QUERY}/admin" + (f"#course={course}" if course else ""))
    page.fill("#token", token)
    page.click("#tokenForm button[type=submit]")
    return page


def serious_violations(page):
    return [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
            for v in Axe().run(page).response["violations"] if v["impact"] in ("critical", "serious")]


def no_horizontal_overflow(page):
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def shown_number(page, id):
    return page.locator(f"#{id}").get_attribute("data-value")


def test_the_numbers_equal_the_apis(seeded, new_page):
    page = open_dashboard(new_page(), seeded.admin)
    # The course list is buttons, named by the course.
    page.get_by_role("button", name=re.compile(r"^CS101")).click()
    expect(page.locator("#courseTitle")).to_have_text("CS101 · Introduction to Programming")
    expect(page.locator("#status")).to_contain_text("Refreshed")
    stats = seeded.json("/v1/courses/CS101/stats")
    assert stats["withheld"] is False
    assert shown_number(page, "responses") == str(stats["responses"])
    for field, id, digits in [("average", "average", 2), ("median", "median", 1), ("stddev", "stddev", 2)]:
        assert float(shown_number(page, id)) == stats[field], field
        expect(page.locator(f"#{id}")).to_have_text(f"{stats[field]:.{digits}f}")
    assert float(shown_number(page, "responseRate")) == stats["response_rate"]
    expect(page.locator("#responseRate")).to_have_text(
        f"{round(stats['response_rate'] * 100)}% ({stats['responses']} / {stats['enrolled']})")
    # The chart's text alternative carries every count.
    alt = page.locator("#bars svg").get_attribute("aria-label")
    for r in range(1, 6):
        assert f"{r} stars: {stats['distribution'][str(r)]} (" in alt, alt
    # The trend as a table, bucket by bucket as the API has it.
    trend = seeded.json("/v1/courses/CS101/trend")
    page.locator("#trendTable summary").click()
    rows = page.locator("#trendRows tr")
    expect(rows).to_have_count(len(trend["points"]))
    last = trend["points"][-1]
    expect(rows.last.locator("td")).to_have_text([last["start"], str(last["count"]),
                                                  "–" if last["average"] is None else f"{last['average']:.2f}"])
    # One date format everywhere: ISO, UTC.
    assert ISO_TIME.match(page.locator("#updated").inner_text())
    for when in page.locator("#items td.when").all_inner_texts():
        assert ISO_TIME.match(when), when
    assert not [e for e in page.js_errors if "Content Security Policy" in e], page.js_errors


def test_comments_page_and_download_as_the_api_serves_them(seeded, new_page):
    page = open_dashboard(new_page(), seeded.admin, "CS101")
    first = seeded.json("/v1/courses/CS101/feedback?limit=20&include_hidden=true")
    rows = page.locator("#items tr")
    expect(rows).to_have_count(20)
    expect(rows.first.locator("td.comment")).to_have_text(first["items"][0]["comment"] or "")
    expect(page.locator("#prev")).to_be_disabled()
    page.click("#next")
    expect(page.locator("#pageNo")).to_have_text("Page 2")
    second = seeded.json(f"/v1/courses/CS101/feedback?limit=20&include_hidden=true&cursor={first['next_cursor']}")
    expect(rows).to_have_count(len(second["items"]))
    expect(page.locator("#next")).to_be_disabled()
    page.click("#prev")
    expect(page.locator("#pageNo")).to_have_text("Page 1")
    expect(rows).to_have_count(20)
    with page.expect_download() as download:
        page.click("#csv")
    assert download.value.suggested_filename == "CS101-feedback.csv"
    saved = open(download.value.path(), "rb").read()
    assert saved == seeded.get("/v1/courses/CS101/feedback.csv").body()
    assert saved.startswith(b"\xef\xbb\xbffeedback_id,rating,comment,submitted_at")


def test_an_instructor_sees_a_small_course_withheld(seeded, new_page):
    page = open_dashboard(new_page(), seeded.instructor, "HIST210")
    stats = seeded.json("/v1/courses/HIST210/stats", seeded.instructor)
    assert stats["withheld"] is True and stats["responses"] == 2
    expect(page.locator("#withheld")).to_have_text(f"Fewer than {MIN_RESPONSES} responses: withheld to protect students.")
    expect(page.locator("#responses")).to_have_text("2")
    for id in ["average", "median", "stddev", "responseRate"]:
        expect(page.locator(f"#{id}")).to_have_text("–")
    expect(page.locator("#bars svg")).to_have_count(0)
    expect(page.locator("#items tr")).to_have_count(1)
    expect(page.locator("#items")).to_have_text("No comments yet")
    # No moderation for an instructor; their list is their courses.
    expect(page.locator("#views")).to_be_hidden()
    expect(page.locator("#courses button.course")).to_have_count(2)
    page.click("#lang")
    expect(page.locator("#withheld")).to_have_text(f"回答少于 {MIN_RESPONSES} 份：为保护学生，暂不显示评分和评论。")


def test_old_numbers_go_before_a_new_course_or_an_error_shows(seeded, new_page):
    page = open_dashboard(new_page(), seeded.admin, "CS101")
    expect(page.locator("#responses")).to_have_text("23")
    # A failed refresh: the numbers are greyed as out of date before the error shows.
    page.route(re.compile(r".*/v1/courses/CS101/stats$"), lambda route: route.fulfill(
        status=503, content_type="application/json",
        body='{"error":{"code":"unavailable","message":"MySQL is unavailable"}}'))
    expect(page.locator("#status")).to_contain_text("Could not refresh", timeout=8000)
    expect(page.locator("#courseData")).to_have_class(re.compile(r"\bstale\b"))
    page.unroute(re.compile(r".*/v1/courses/CS101/stats$"))
    expect(page.locator("#courseData")).not_to_have_class(re.compile(r"\bstale\b"), timeout=8000)
    # Another course: nothing of the previous one while it loads, or when it is refused.
    held = []
    page.route(re.compile(r".*/v1/courses/CS201/stats$"), lambda route: held.append(route))
    page.fill("#course", "CS201")
    page.click("#courseForm button[type=submit]")
    expect(page.locator("#courseTitle")).to_have_text("CS201 · Algorithms and Data Structures")
    for id in ["responses", "average", "median"]:
        expect(page.locator(f"#{id}")).to_have_text("–")
    expect(page.locator("#items tr")).to_have_count(0)
    for _ in range(50):
        if held:
            break
        page.wait_for_timeout(100)   # lets Playwright take the held request
    while held:
        held.pop().fulfill(status=403, content_type="application/json",
                           body='{"error":{"code":"not_your_course","message":"not among the courses you teach"}}')
    expect(page.locator("#status")).to_contain_text("This course is not one of yours")
    expect(page.locator("#responses")).to_have_text("–")


def test_an_admin_hides_and_unhides_a_comment(seeded, new_page):
    flagged = seeded.submit("browser-student-moderated", "ECON101", 1, "the lectures are shit")
    fid = flagged["feedback_id"]
    seeded.wait_for("the flagged comment is queued", lambda: any(
        i["feedback_id"] == fid for i in seeded.json("/v1/moderation?limit=200")["items"]))
    page = open_dashboard(new_page(), seeded.admin)
    page.click("#viewModeration")
    row = page.locator(f"#queue tr[data-id='{fid}']")
    expect(row).to_contain_text("ECON101")
    expect(row.locator("td.comment")).to_have_text("the lectures are ****")
    expect(page.locator("#views")).to_be_visible()
    assert not serious_violations(page)
    screenshot(page, "moderation")
    row.get_by_role("button", name="Hide").click()
    expect(row).to_have_count(0)
    expect(page.locator("#log tr").first).to_contain_text(fid)
    expect(page.locator("#log tr").first).to_contain_text("hide")
    expect(page.locator("#log tr").first).to_contain_text("browser-admin")

    def listed():
        return [i["feedback_id"] for i in seeded.json("/v1/courses/ECON101/feedback?limit=200")["items"]]

    seeded.wait_for("the hidden comment leaves the listing", lambda: fid not in listed(), timeout=5.5)
    assert not any(i["feedback_id"] == fid for i in seeded.json("/v1/moderation?limit=200")["items"])
    # From the course's comments, where an admin sees the hidden ones marked.
    page.click("#viewCourses")
    page.fill("#course", "ECON101")
    page.click("#courseForm button[type=submit]")
    item = page.locator(f"#items tr[data-id='{fid}']")
    expect(item).to_contain_text("hidden")
    expect(item).to_contain_text("words masked")
    item.get_by_role("button", name="Unhide").click()
    expect(item.get_by_role("button", name="Hide")).to_be_visible()
    seeded.wait_for("the comment is listed again", lambda: fid in listed(), timeout=5.5)
    log = seeded.json("/v1/moderation/log")["items"]
    assert [(e["action"], e["sub"]) for e in log if e["feedback_id"] == fid][:2] == [
        ("unhide", "browser-admin"), ("hide", "browser-admin")]


def test_the_dashboard_fits_a_phone_and_passes_an_accessibility_scan(seeded, new_page):
    for name, viewport in [("dashboard-desktop", DESKTOP), ("dashboard-390", PHONE)]:
        page = open_dashboard(new_page(viewport=viewport), seeded.admin, "CS101")
        expect(page.locator("#responses")).to_have_text("23")
        expect(page.locator("#items tr")).to_have_count(20)
        assert no_horizontal_overflow(page), name
        assert not serious_violations(page), name
        screenshot(page, name)
        page.click("#viewModeration")
        expect(page.locator("#log tr").first).to_be_visible()
        assert no_horizontal_overflow(page), name + " moderation"
    page = open_dashboard(new_page(viewport=PHONE, lang="zh"), seeded.instructor, "HIST210")
    expect(page.locator("#withheld")).to_be_visible()
    assert no_horizontal_overflow(page)
    assert not serious_violations(page)
    screenshot(page, "dashboard-instructor-withheld")
