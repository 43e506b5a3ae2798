"""The student form (GET / on ingest) in a real browser."""

import json

from axe_playwright_python.sync_playwright import Axe
from conftest import DESKTOP, INGEST, PHONE, mint, screenshot
from playwright.sync_api import expect


def open_form(page, student=None):
    page.goto(f"{INGEST}/")
    if student:
        page.fill("#token", mint(student, "student"))
    return page


def choose_stars(page, n):
    # By the radio's accessible name, as a screen reader user finds it.
    page.get_by_role("radio", name=f"{n} star" + ("s" if n > 1 else ""), exact=True).check()


def no_horizontal_overflow(page):
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_the_rating_radios_are_named_1_to_5_in_order(seeded, new_page):
    page = open_form(new_page())
    names = [r.get_attribute("id") for r in page.get_by_role("radio").all()]
    assert names == ["r1", "r2", "r3", "r4", "r5"]
    for n in range(1, 6):
        expect(page.get_by_role("radio", name=f"{n} star" + ("s" if n > 1 else ""), exact=True)).to_have_count(1)
    # Each input the student fills has a label.
    for label in ["Course", "Comment (optional)", "Sign-in token"]:
        expect(page.get_by_label(label, exact=True)).to_have_count(1)
    # The keyboard moves through the stars in order.
    page.get_by_role("radio", name="1 star", exact=True).focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "r3"
    assert page.is_checked("#r3")


def test_a_submission_is_answered_counted_and_the_form_reset(seeded, new_page):
    page = open_form(new_page(), "browser-student-submit")
    before = seeded.json("/v1/courses/CS201/stats")["responses"]
    page.fill("#course", "algorithms")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect(page.locator("#course")).to_have_value("CS201")
    expect(page.locator("#courseNote")).to_contain_text("Algorithms and Data Structures")
    choose_stars(page, 4)
    page.fill("#comment", "浏览器测试：讲得很清楚")
    with page.expect_response(f"{INGEST}/v1/feedback") as answer:
        page.click("#submit")
    assert answer.value.status == 202
    feedback_id = answer.value.json()["feedback_id"]
    expect(page.locator("#result")).to_contain_text(f"Thank you! Your feedback was received. Reference: {feedback_id}")
    # Reset for the next course: nothing of this one left in the fields.
    expect(page.locator("#course")).to_have_value("")
    expect(page.locator("#comment")).to_have_value("")
    expect(page.locator("#count")).to_have_text("0 / 2000")
    assert page.evaluate("document.querySelector('input[name=rating]:checked')") is None
    seeded.wait_responses("CS201", before + 1)
    items = seeded.json("/v1/courses/CS201/feedback?limit=200")["items"]
    assert [i["comment"] for i in items if i["feedback_id"] == feedback_id] == ["浏览器测试：讲得很清楚"]
    assert not page.js_errors, page.js_errors


def test_validation_messages_follow_the_page_language(seeded, new_page):
    page = open_form(new_page(lang="zh"))
    page.click("#submit")
    expect(page.locator("#result")).to_have_text("请填写有效的课程编号（字母、数字和 _ . : -），或从列表中选择课程。")
    expect(page.locator("#course")).to_have_attribute("aria-invalid", "true")
    assert page.evaluate("document.activeElement.id") == "course"
    # The switch redraws what is on screen, the message included.
    page.click("#lang")
    expect(page.locator("h1")).to_have_text("Course feedback")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("#result")).to_have_text(
        "Please enter a valid course id (letters, digits and _ . : -) or pick a course from the list.")
    page.fill("#course", "CS101")
    page.click("#submit")
    expect(page.locator("#result")).to_have_text("Please choose 1 to 5 stars.")
    choose_stars(page, 3)
    page.click("#submit")
    expect(page.locator("#result")).to_have_text("Please paste your sign-in token.")
    # The server's refusal, by its code, in the page's language, not the server's English.
    page.fill("#token", "not-a-token")
    page.click("#submit")
    expect(page.locator("#result")).to_have_text("Your token is invalid or expired; please get a new one.")
    page.click("#lang")
    expect(page.locator("#result")).to_have_text("登录令牌无效或已过期，请重新获取。")
    expect(page.locator("label[for=comment]")).to_have_text("评论（可选）")


def test_the_course_field_suggests_the_catalog_by_id_and_title(seeded, new_page):
    page = open_form(new_page())
    listbox = page.get_by_role("listbox")
    page.fill("#course", "calc")
    expect(listbox.get_by_role("option")).to_have_count(1)
    expect(listbox.get_by_role("option")).to_contain_text("MATH101")
    # "cs" is in two ids and in a title (Economics).
    page.fill("#course", "cs")
    expect(listbox.get_by_role("option")).to_have_count(3)
    expect(page.locator("#course")).to_have_attribute("aria-expanded", "true")
    page.keyboard.press("Escape")
    expect(page.locator("#course")).to_have_attribute("aria-expanded", "false")
    # A click picks the id; the note names the course.
    page.fill("#course", "history")
    listbox.get_by_role("option").first.click()
    expect(page.locator("#course")).to_have_value("HIST210")
    expect(page.locator("#courseNote")).to_have_text("HIST210 · Modern Chinese History (2026 Autumn)")
    # An id typed in another case is sent as the catalog spells it: one course, not two.
    page.fill("#course", "econ101")
    choose_stars(page, 5)
    page.fill("#token", mint("browser-student-case", "student"))
    with page.expect_request(f"{INGEST}/v1/feedback") as sent:
        page.click("#submit")
    assert json.loads(sent.value.post_data)["course_id"] == "ECON101"
    expect(page.locator("#result")).to_contain_text("Thank you!")


def test_the_student_is_told_of_masked_words_a_cut_comment_and_a_replaced_rating(seeded, new_page):
    page = open_form(new_page(), "browser-student-notices")
    page.fill("#course", "MATH101")
    choose_stars(page, 2)
    # A paste past the limit is cut, and the student is told so.
    page.fill("#comment", "this is shit. " + "长" * 2100)
    expect(page.locator("#cutNote")).to_have_text(
        "A comment is at most 2000 characters: the rest of what you pasted was cut off.")
    expect(page.locator("#count")).to_have_text("2000 / 2000")
    assert page.evaluate("[...document.getElementById('comment').value].length") == 2000
    with page.expect_response(f"{INGEST}/v1/feedback") as answer:
        page.click("#submit")
    assert answer.value.json().get("flagged") is True, answer.value.json()
    result = page.locator("#result")
    expect(result).to_contain_text("Some words in your comment were masked with *")
    expect(result).to_contain_text("The comment was longer than 2000 characters and was sent cut at the limit.")
    expect(result).not_to_contain_text("replaces")
    expect(page.locator("#cutNote")).to_be_hidden()
    # The same course again from this browser: the form knows it replaces the first.
    page.fill("#course", "MATH101")
    expect(page.locator("#courseNote")).to_contain_text(
        "You rated MATH101 from this browser before: sending again replaces that rating.")
    choose_stars(page, 5)
    page.click("#submit")
    expect(result).to_contain_text("This replaces your earlier rating for MATH101")
    # In Chinese too.
    page.click("#lang")
    expect(result).to_contain_text("本次提交替换了您之前对 MATH101 的评分")


def test_the_form_fits_a_phone_and_passes_an_accessibility_scan(seeded, new_page):
    for name, viewport in [("form-desktop", DESKTOP), ("form-390", PHONE)]:
        page = open_form(new_page(viewport=viewport), "browser-student-shots")
        page.fill("#course", "cs")
        expect(page.get_by_role("listbox")).to_be_visible()
        assert no_horizontal_overflow(page), name
        if viewport == DESKTOP:
            screenshot(page, "form-catalog")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")
        choose_stars(page, 4)
        page.fill("#comment", "The labs were the best part; more of them, please.")
        assert no_horizontal_overflow(page), name
        violations = Axe().run(page).response["violations"]
        bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]]) for v in violations
               if v["impact"] in ("critical", "serious")]
        assert not bad, bad
        screenshot(page, name)
    # And in Chinese, with an answer on screen.
    page = open_form(new_page(viewport=DESKTOP, lang="zh"), "browser-student-zh")
    page.fill("#course", "CS101")
    page.get_by_role("radio", name="5 星", exact=True).check()
    page.fill("#comment", "老师讲得很清楚。")
    page.click("#submit")
    expect(page.locator("#result")).to_contain_text("谢谢")
    bad = [v["id"] for v in Axe().run(page).response["violations"] if v["impact"] in ("critical", "serious")]
    assert not bad, bad
    screenshot(page, "form-zh-answered")
