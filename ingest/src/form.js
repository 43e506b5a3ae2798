// The student feedback form (GET / on ingest). Sign-in comes from /oidc.js.
(() => {
  "use strict";
  const text = {
    zh: {
      title: "课程反馈", course: "课程", courseHint: "输入课程编号或名称，从列表中选择",
      rating: "评分", ratingHint: "1 星最低，5 星最高", star1: "1 星", star2: "2 星", star3: "3 星", star4: "4 星", star5: "5 星",
      comment: "评论（可选）", token: "登录令牌",
      tokenHint: "粘贴学生令牌（仅保存在本标签页中）", submit: "提交反馈", other: "English", courses: "课程目录",
      accepted: "谢谢！您的反馈已收到。编号：", spooled: "谢谢！您的反馈已安全保存，稍后会计入统计。编号：",
      masked: "评论中有词语按学校的敏感词表被替换成了 *，其余内容保持原样。",
      replaced: "本次提交替换了您之前对 {course} 的评分（此浏览器记得您在这里提交过）。每门课程只计您最新的一次评分。",
      ratedBefore: "您之前在此浏览器上评价过 {course}：再次提交会替换之前的评分。",
      cut: "评论最多 2000 字，超出的部分已被截去。",
      wasCut: "评论超过 2000 字，已按上限截断后提交。",
      needCourse: "请填写有效的课程编号（字母、数字和 _ . : -），或从列表中选择课程。", needRating: "请选择 1 到 5 星。",
      needToken: "请粘贴登录令牌。", needSignIn: "请先登录，再提交反馈。", network: "无法连接服务器，请稍后重试。",
      signInToSend: "登录学生账号后即可提交反馈。",
      studentsOnly: "此表单供学生填写。您当前以{role}身份登录，服务不会接受此账号的提交；请使用学生账号登录。",
      signedOutKept: "登录已失效，反馈未发送。请重新登录后再提交（您填写的内容会保留）。",
      fields: { course_id: "课程", rating: "评分", comment: "评论" },
      fieldCodes: {
        "invalid_value/course_id": "课程编号无效：只能包含字母、数字和 _ . : -，最多 64 个字符。",
        "invalid_value/rating": "评分必须是 1 到 5 星。",
        "invalid_value/comment": "评论太长：最多 2000 字。",
      },
      codes: {
        unauthorized: "登录令牌无效或已过期，请重新获取。", invalid_token: "登录令牌无效或已过期，请重新获取。",
        forbidden: "此令牌不是学生令牌。", unknown_course: "课程目录中没有这门课程，请从列表中选择。",
        rate_limited: "提交太频繁，请稍后再试。", sensitive_content: "评论中含有不允许的词语，请修改后再提交。",
        payload_too_large: "内容太长。", unavailable: "服务暂时繁忙，请稍后重试。", internal: "服务出错，请稍后重试。",
        request_timeout: "提交超时，请重试。", idempotency_key_in_use: "上一次提交仍在处理中，请稍候再试。",
        idempotency_key_reused: "表单内容已改变，请重新提交。", invalid_idempotency_key: "页面出错，请刷新后重试。",
        invalid_json: "页面出错，请刷新后重试。", invalid_body: "页面出错，请刷新后重试。",
        unsupported_media_type: "页面出错，请刷新后重试。", not_found: "页面出错，请刷新后重试。",
        method_not_allowed: "页面出错，请刷新后重试。",
        invalid_value: "{field}不符合要求。", missing_field: "缺少{field}。", invalid_type: "{field}的类型错误。",
      },
      oidcCodes: { forbidden: "此账号不是学生账号，无法提交反馈。" },
    },
    en: {
      title: "Course feedback", course: "Course", courseHint: "Type a course id or part of its name, then pick it from the list",
      rating: "Rating", ratingHint: "1 star is the lowest, 5 stars the highest",
      star1: "1 star", star2: "2 stars", star3: "3 stars", star4: "4 stars", star5: "5 stars",
      comment: "Comment (optional)", token: "Sign-in token",
      tokenHint: "Paste your student token (kept in this tab only)", submit: "Send feedback", other: "中文", courses: "Courses",
      accepted: "Thank you! Your feedback was received. Reference: ",
      spooled: "Thank you! Your feedback is safely stored and will be counted shortly. Reference: ",
      masked: "Some words in your comment were masked with * (the university's list of sensitive words); the rest is kept as you wrote it.",
      replaced: "This replaces your earlier rating for {course} (this browser remembers you sent one from here). " +
        "Only your latest rating of a course counts.",
      ratedBefore: "You rated {course} from this browser before: sending again replaces that rating.",
      cut: "A comment is at most 2000 characters: the rest of what you pasted was cut off.",
      wasCut: "The comment was longer than 2000 characters and was sent cut at the limit.",
      needCourse: "Please enter a valid course id (letters, digits and _ . : -) or pick a course from the list.",
      needRating: "Please choose 1 to 5 stars.",
      needToken: "Please paste your sign-in token.", needSignIn: "Please sign in before sending feedback.",
      network: "Could not reach the server; please try again.",
      signInToSend: "Sign in with your student account to send feedback.",
      studentsOnly: "This form is for students. You are signed in as {role}, and the service will not take " +
        "feedback from this account; sign in with a student account.",
      signedOutKept: "Your sign-in has ended and the feedback was not sent. Sign in again and resend " +
        "(what you wrote is kept).",
      fields: { course_id: "The course", rating: "The rating", comment: "The comment" },
      fieldCodes: {
        "invalid_value/course_id": "The course id is not valid: letters, digits and _ . : - only, at most 64 characters.",
        "invalid_value/rating": "The rating must be 1 to 5 stars.",
        "invalid_value/comment": "The comment is too long: at most 2000 characters.",
      },
      codes: {
        unauthorized: "Your token is invalid or expired; please get a new one.",
        invalid_token: "Your token is invalid or expired; please get a new one.",
        forbidden: "This token is not a student token.",
        unknown_course: "This course is not in the catalog; please pick one from the list.",
        rate_limited: "Too many submissions; please wait a moment.",
        sensitive_content: "The comment contains words that are not allowed; please rephrase it.",
        payload_too_large: "The submission is too long.", unavailable: "The service is busy; please retry shortly.",
        internal: "The service failed; please retry shortly.", request_timeout: "The submission timed out; please retry.",
        idempotency_key_in_use: "Your previous attempt is still being processed; please wait a moment.",
        idempotency_key_reused: "The form changed since the last attempt; please send it again.",
        invalid_idempotency_key: "The page went wrong; please reload it and retry.",
        invalid_json: "The page went wrong; please reload it and retry.",
        invalid_body: "The page went wrong; please reload it and retry.",
        unsupported_media_type: "The page went wrong; please reload it and retry.",
        not_found: "The page went wrong; please reload it and retry.",
        method_not_allowed: "The page went wrong; please reload it and retry.",
        invalid_value: "{field} is not valid.", missing_field: "{field} is missing.", invalid_type: "{field} has the wrong type.",
      },
      oidcCodes: { forbidden: "This account is not a student account; it cannot send feedback." },
    },
  };
  const DRAFT_KEY = "feedback.form.draft";
  // Courses this user sent feedback for from this browser (ids only), per
  // `sub`: what lets the form say a new rating replaces an earlier one.
  const RATED_KEY = "feedback.form.rated.";
  const MAX_CHARS = 2000;
  const COURSE_RE = /^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$/;
  let lang = localStorage.getItem("feedback.lang") || (navigator.language.startsWith("zh") ? "zh" : "en");
  const $ = (id) => document.getElementById(id);
  const result = $("result");
  let attemptKey = null; // one Idempotency-Key per attempt, so a double click counts once
  let sending = false;
  let lastUser = null;
  let catalog = [];      // [{course_id, title, term}] from GET /v1/catalog
  let cut = false;       // the comment was cut at the limit since the last reset
  let lastResult = null; // what #result shows, redrawn in the other language

  const auth = window.FeedbackAuth.start({ page: "form", onChange: renderAuth });
  const oidc = auth.mode === "oidc";
  const fmt = (s, vars) => s.replace(/\{(\w+)\}/g, (m, k) => (k in (vars || {}) ? vars[k] : m));

  function applyLang() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = text[lang][el.dataset.i18n]; });
    $("lang").textContent = text[lang].other;
    $("lang").lang = lang === "zh" ? "en" : "zh-CN";
    $("courseList").setAttribute("aria-label", text[lang].courses);
    document.title = text[lang].title;
    if (cut) $("cutNote").textContent = text[lang].cut;
    if (lastResult) drawResult();
    describeCourse();
    renderAuth();
  }

  // What #result says, kept as keys so the language switch redraws it.
  function show(ok, lines) { lastResult = { ok, lines: [].concat(lines) }; drawResult(); }
  function drawResult() {
    result.className = lastResult.ok ? "ok" : "err";
    result.replaceChildren(...lastResult.lines.map((line, i) => {
      const p = document.createElement("p");
      p.textContent = typeof line === "function" ? line(text[lang]) : line;
      if (i) p.className = "note";
      return p;
    }));
  }
  function clearResult() { lastResult = null; result.className = ""; result.replaceChildren(); }
  function invalid(id, on) { if (on) $(id).setAttribute("aria-invalid", "true"); else $(id).removeAttribute("aria-invalid"); }

  // A staff account on the student form: say so (the service would answer 403).
  function wrongRole() {
    return oidc && auth.state === "signedIn" && auth.user && (auth.user.role === "instructor" || auth.user.role === "admin");
  }

  function renderAuth() {
    $("tokenField").hidden = oidc;
    const said = auth.render(lang, text[lang].signInToSend);
    if (oidc) {
      const userKey = auth.user ? auth.user.sub + "/" + auth.user.role : null;
      if (userKey !== lastUser) { attemptKey = null; lastUser = userKey; describeCourse(); }
      $("authMessage").hidden = !said.text;
      $("authMessage").textContent = said.text;
      $("authMessage").className = "auth-message" + (said.kind ? " " + said.kind : "");
      $("auth").classList.toggle("expired", auth.state === "expired");
    }
    const wrong = wrongRole();
    $("roleNotice").hidden = !wrong;
    $("roleNotice").textContent = wrong ? text[lang].studentsOnly.replace("{role}", auth.roleText(lang)) : "";
    $("submit").disabled = sending || wrong || (oidc && auth.state === "signingIn");
  }

  // The courses this user rated from this browser (see RATED_KEY).
  function ratedCourses() {
    const sub = auth.subject();
    if (!sub) return [];
    try { return JSON.parse(localStorage.getItem(RATED_KEY + sub) || "[]"); } catch (_) { return []; }
  }
  function remember(course) {
    const sub = auth.subject();
    if (!sub) return;
    const list = ratedCourses().filter((c) => c !== course).concat(course).slice(-200);
    try { localStorage.setItem(RATED_KEY + sub, JSON.stringify(list)); } catch (_) { /* storage off */ }
  }

  // --- The course field: a combobox over the catalog (by id and by title). ---
  let matches = [], active = -1;
  const norm = (s) => s.trim().toLowerCase();
  function entryFor(value) {
    const v = norm(value);
    if (!v) return null;
    return catalog.find((c) => c.course_id.toLowerCase() === v) ||
      (catalog.filter((c) => norm(c.title) === v).length === 1 ? catalog.find((c) => norm(c.title) === v) : null);
  }
  // What the form sends: the catalog's own spelling of the id when the text
  // names a catalog course (`cs101`, or its exact title), else the text.
  function courseId() {
    const entry = entryFor($("course").value);
    return entry ? entry.course_id : $("course").value.trim();
  }
  function describeCourse() {
    const note = $("courseNote");
    note.replaceChildren();
    const entry = entryFor($("course").value);
    if (entry) note.append(entry.course_id + " · " + entry.title + (entry.term ? " (" + entry.term + ")" : ""));
    const id = courseId();
    if (COURSE_RE.test(id) && ratedCourses().includes(id)) {
      const again = document.createElement("span");
      again.className = "again";
      again.textContent = fmt(text[lang].ratedBefore, { course: id });
      note.append(again);
    }
  }
  function closeList() {
    $("courseList").hidden = true;
    $("course").setAttribute("aria-expanded", "false");
    $("course").removeAttribute("aria-activedescendant");
    active = -1;
  }
  function openList() {
    const q = norm($("course").value);
    matches = catalog.filter((c) => !q || c.course_id.toLowerCase().includes(q) || norm(c.title).includes(q)).slice(0, 50);
    const list = $("courseList");
    list.replaceChildren(...matches.map((c, i) => {
      const li = document.createElement("li");
      li.id = "course-option-" + i;
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", "false");
      const id = document.createElement("span"), title = document.createElement("span");
      id.className = "id"; id.textContent = c.course_id;
      title.textContent = c.title;
      li.append(id, title);
      if (c.term) { const term = document.createElement("span"); term.className = "term"; term.textContent = c.term; li.append(term); }
      li.addEventListener("mousedown", (e) => e.preventDefault());   // keeps the focus in the field
      li.addEventListener("click", () => pick(c));
      return li;
    }));
    if (!matches.length) return closeList();
    list.hidden = false;
    $("course").setAttribute("aria-expanded", "true");
    setActive(-1);
  }
  function setActive(i) {
    active = i;
    [...$("courseList").children].forEach((li, j) => li.setAttribute("aria-selected", String(j === i)));
    if (i < 0) { $("course").removeAttribute("aria-activedescendant"); return; }
    const li = $("course-option-" + i);
    $("course").setAttribute("aria-activedescendant", li.id);
    li.scrollIntoView({ block: "nearest" });
  }
  function pick(entry) {
    $("course").value = entry.course_id;
    invalid("course", false);
    closeList();
    describeCourse();
    attemptKey = null;
  }
  $("course").addEventListener("input", () => { attemptKey = null; invalid("course", false); openList(); describeCourse(); });
  $("course").addEventListener("focus", () => { if (catalog.length && !$("course").value) openList(); });
  $("course").addEventListener("blur", () => { closeList(); describeCourse(); });
  $("course").addEventListener("keydown", (e) => {
    const open = !$("courseList").hidden;
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      if (!open) openList();
      if (!matches.length) return;
      const step = e.key === "ArrowDown" ? 1 : -1;
      setActive((active + step + matches.length + (active < 0 && step < 0 ? 1 : 0)) % matches.length);
    } else if (e.key === "Enter" && open && active >= 0) {
      e.preventDefault();
      pick(matches[active]);
    } else if (e.key === "Escape" && open) {
      e.preventDefault();
      closeList();
    }
  });
  async function loadCatalog() {
    try {
      const res = await fetch("/v1/catalog", { cache: "no-cache" });
      if (!res.ok) return;   // no catalog here: the field takes any course id
      const body = await res.json();
      catalog = (body.courses || []).filter((c) => c && typeof c.course_id === "string" && typeof c.title === "string");
      if (document.activeElement === $("course")) openList();
      describeCourse();
    } catch (_) { /* the same: typed ids still work */ }
  }

  // What the student wrote survives the round trip to the sign-in page.
  function saveDraft() {
    const rating = document.querySelector("input[name=rating]:checked");
    const draft = {course: $("course").value, rating: rating ? rating.value : "", comment: $("comment").value};
    try { sessionStorage.setItem(DRAFT_KEY, JSON.stringify(draft)); } catch (_) { /* storage off */ }
  }
  function restoreDraft() {
    let draft = null;
    try { draft = JSON.parse(sessionStorage.getItem(DRAFT_KEY) || "null"); sessionStorage.removeItem(DRAFT_KEY); }
    catch (_) { draft = null; }
    if (!draft) return;
    $("course").value = draft.course || "";
    $("comment").value = draft.comment || "";
    const radio = draft.rating && document.getElementById("r" + draft.rating);
    if (radio) radio.checked = true;
    updateCount();
  }

  // The limit is 2000 characters as the server counts them (code points);
  // a textarea's maxlength counts UTF-16 units (an emoji is two) and cuts a
  // paste silently, so the form cuts it and says so.
  function updateCount() {
    const chars = [...$("comment").value];
    if (chars.length > MAX_CHARS) {
      $("comment").value = chars.slice(0, MAX_CHARS).join("");
      cut = true;
      $("cutNote").textContent = text[lang].cut;
      $("cutNote").hidden = false;
    }
    $("count").textContent = `${Math.min(chars.length, MAX_CHARS)} / ${MAX_CHARS}`;
  }

  // After a submission was taken: an empty form, ready for the next course.
  function resetForm() {
    $("form").reset();
    if (!oidc) $("token").value = auth.secretToken();
    cut = false;
    $("cutNote").hidden = true;
    updateCount();
    describeCourse();
    ["course", "comment"].forEach((id) => invalid(id, false));
  }

  // An error answer in the page's language, from its code (and field); the
  // server's own English words only for a code this page does not know.
  function errorLine(response, data) {
    const error = data.error || {};
    const input = { course_id: "course", rating: "r1", comment: "comment" }[error.field];
    if (input) invalid(input, true);
    const words = (tt) => tt.fieldCodes[error.code + "/" + error.field] || (oidc && tt.oidcCodes[error.code]) || tt.codes[error.code];
    if (words(text.en)) return (tt) => fmt(words(tt), { field: tt.fields[error.field] || error.field || "" });
    return (error.message || response.statusText || String(response.status)) + (error.field ? ` (${error.field})` : "");
  }

  $("lang").addEventListener("click", () => { lang = lang === "zh" ? "en" : "zh"; localStorage.setItem("feedback.lang", lang); applyLang(); });
  $("signIn").addEventListener("click", () => { saveDraft(); clearResult(); auth.signIn(); });
  $("signOut").addEventListener("click", () => { clearResult(); auth.signOut(); });
  if (!oidc) $("token").value = auth.secretToken();
  $("comment").addEventListener("input", () => { updateCount(); attemptKey = null; invalid("comment", false); });
  $("token").addEventListener("input", () => { attemptKey = null; describeCourse(); });
  $("token").addEventListener("change", () => { auth.setSecretToken($("token").value); describeCourse(); });
  document.querySelectorAll("input[name=rating]").forEach((el) => el.addEventListener("change", () => { attemptKey = null; }));

  $("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    closeList();
    const course = courseId();
    const rating = document.querySelector("input[name=rating]:checked");
    if (!COURSE_RE.test(course)) { invalid("course", true); $("course").focus(); return show(false, (tt) => tt.needCourse); }
    invalid("course", false);
    if (!rating) { $("r1").focus(); return show(false, (tt) => tt.needRating); }
    if (oidc) {
      await auth.ready;
      if (auth.state !== "signedIn") return show(false, auth.state === "expired" ? (tt) => tt.signedOutKept : (tt) => tt.needSignIn);
    } else {
      const token = $("token").value.trim();
      if (!token) { $("token").focus(); return show(false, (tt) => tt.needToken); }
      auth.setSecretToken(token);
    }
    $("course").value = course;
    attemptKey = attemptKey || (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2));
    const body = { course_id: course, rating: Number(rating.value) };
    const comment = $("comment").value.trim();
    if (comment) body.comment = comment;
    const wasCut = cut;
    sending = true;
    $("submit").disabled = true;
    $("submit").classList.add("busy");
    try {
      const response = await auth.fetch("/v1/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json", "Idempotency-Key": attemptKey },
        body: JSON.stringify(body),
      });
      const data = await response.json().catch(() => ({}));
      if (response.status === 202) {
        const again = ratedCourses().includes(course);
        const id = data.feedback_id;
        const lines = [(tt) => (data.status === "spooled" ? tt.spooled : tt.accepted) + id];
        if (data.flagged === true) lines.push((tt) => tt.masked);
        if (wasCut) lines.push((tt) => tt.wasCut);
        if (again) lines.push((tt) => fmt(tt.replaced, { course }));
        remember(course);
        attemptKey = null;
        resetForm();
        show(true, lines);
      } else if (response.status === 401 && oidc) {
        show(false, (tt) => tt.signedOutKept);
      } else {
        show(false, errorLine(response, data));
      }
    } catch (e) {
      show(false, (tt) => tt.network);
    } finally {
      sending = false;
      $("submit").classList.remove("busy");
      renderAuth();
      if (!oidc) $("submit").disabled = false;
    }
  });
  restoreDraft();
  applyLang();
  loadCatalog();
})();
