// The dashboard (GET /admin on query). Sign-in comes from /oidc.js.
"use strict";
(() => {
const TEXT = {
  zh: {
    title: "课程反馈管理", tokenLabel: "令牌", tokenPh: "管理员或教师令牌 (JWT)", useToken: "使用令牌", forget: "清除",
    viewCourses: "课程", viewModeration: "评论审核",
    findCourse: "查找课程", courseLabel: "课程编号", show: "查看", topCourses: "反馈最多的课程", pickCourse: "请选择课程",
    responses: "回答人数", average: "平均分", median: "中位数", stddev: "标准差", responseRate: "回答率",
    updated: "更新时间", source: "数据来源", rateOf: "（{n} / {of}）",
    distribution: "评分分布", trend: "趋势", byDay: "按天", byWeek: "按周", bucketLabel: "按天或按周",
    fromLabel: "开始日期（YYYY-MM-DD）", toLabel: "结束日期（YYYY-MM-DD）",
    trendHint: "折线：平均分（左轴 1–5）；柱：回答数（右轴）；日期按 UTC",
    trendAsTable: "以表格查看趋势", bucketStart: "开始日期",
    barsAlt: "评分分布：{list}。", lineAlt: "趋势（{bucket}，{from} 至 {to}）：共 {n} 个时段，{total} 条回答，平均分 {min} 至 {max}。数字见下方表格。",
    lineAltEmpty: "趋势（{from} 至 {to}）：此期间没有回答。", stars: "{n} 星",
    comments: "最新评论", prev: "上一页", next: "下一页", csv: "下载 CSV", actions: "操作",
    when: "时间", rating: "评分", comment: "评论", noComments: "暂无评论", page: "第 {n} 页",
    flagged: "已屏蔽词语", hiddenBadge: "已隐藏", hide: "隐藏", unhide: "取消隐藏", keep: "保留",
    cache: "缓存", database: "数据库", needToken: "请先输入管理员或教师令牌",
    needSignIn: "请先登录（教师或管理员账号）",
    signInHint: "此页面供教师和管理员查看课程反馈统计，请先登录。",
    unauthorized: "令牌无效或已过期", forbidden: "此令牌没有查看权限（需要管理员或该课程的教师）",
    forbiddenAccount: "此账号没有查看权限（需要教师或管理员角色）",
    adminOnly: "此操作仅限管理员。",
    listAdminOnly: "课程列表仅供管理员查看；请在上方输入课程编号。",
    noCoursesYours: "课程目录中还没有列出您教授的课程。",
    staffOnly: "此页面供教师和管理员使用。您当前以{role}身份登录，无法查看课程统计；学生请使用反馈表单提交反馈。",
    notYourCourse: "此课程不在您的授课课程中，无法查看其数据（教师可查看的课程由课程目录指定）。",
    withheld: "回答少于 {n} 份：为保护学生，暂不显示评分和评论。",
    withheldNoN: "回答人数低于最低要求：为保护学生，暂不显示评分和评论。",
    refreshed: "已刷新 {t}", stale: "刷新失败，显示的数据可能已过时：{m}",
    badCourse: "课程编号只能包含字母、数字和 _ . : -，最多 64 个字符", badDate: "日期格式应为 YYYY-MM-DD",
    badRange: "日期范围无效（开始不能晚于结束，最多 366 天）", badCursor: "分页已失效，已回到第一页",
    rateLimited: "请求太频繁，请稍后再试", unavailable: "服务暂时不可用，请稍后重试", internal: "服务出错，请稍后重试",
    notFound: "没有这个评论或资源",
    downloading: "正在下载…", failed: "请求失败：{m}", noCourses: "暂无课程", points: "{n} 条",
    queue: "待审核的评论（含被屏蔽词语）", queueHint: "“隐藏”让评论从列表和 CSV 中消失（评分仍计入）；“保留”让它留在列表中。两者都算审核过。",
    queueEmpty: "没有待审核的评论", more: "更多", log: "审核记录", logEmpty: "暂无审核记录",
    who: "操作人", action: "操作", feedbackId: "反馈编号", courseCol: "课程",
    act_hide: "隐藏", act_unhide: "取消隐藏", hidden: "已隐藏 {id}", unhidden: "已恢复 {id}"
  },
  en: {
    title: "Course feedback admin", tokenLabel: "Token", tokenPh: "Admin or instructor token (JWT)", useToken: "Use token", forget: "Forget",
    viewCourses: "Courses", viewModeration: "Moderation",
    findCourse: "Find a course", courseLabel: "Course id", show: "Show", topCourses: "Courses with the most feedback", pickCourse: "Pick a course",
    responses: "Responses", average: "Average", median: "Median", stddev: "Std. deviation", responseRate: "Response rate",
    updated: "Updated", source: "Source", rateOf: " ({n} / {of})",
    distribution: "Rating distribution", trend: "Trend", byDay: "By day", byWeek: "By week", bucketLabel: "Per day or per week",
    fromLabel: "From (YYYY-MM-DD)", toLabel: "To (YYYY-MM-DD)",
    trendHint: "Line: average (left axis, 1–5); bars: responses (right axis); days in UTC",
    trendAsTable: "Show the trend as a table", bucketStart: "Starting",
    barsAlt: "Rating distribution: {list}.", lineAlt: "Trend ({bucket}, {from} to {to}): {n} periods, {total} responses, averages from {min} to {max}. The numbers are in the table below.",
    lineAltEmpty: "Trend ({from} to {to}): no responses in this period.", stars: "{n} stars",
    comments: "Latest comments", prev: "Previous", next: "Next", csv: "Download CSV", actions: "Actions",
    when: "When", rating: "Rating", comment: "Comment", noComments: "No comments yet", page: "Page {n}",
    flagged: "words masked", hiddenBadge: "hidden", hide: "Hide", unhide: "Unhide", keep: "Keep",
    cache: "cache", database: "database", needToken: "Enter an admin or instructor token first",
    needSignIn: "Sign in first (an instructor or admin account)",
    signInHint: "This dashboard shows course feedback to instructors and admins; please sign in.",
    unauthorized: "The token is invalid or expired", forbidden: "This token may not read this (it needs the admin role, or the course's instructor)",
    forbiddenAccount: "This account may not read statistics (it needs the instructor or admin role)",
    adminOnly: "Only admins may do this.",
    listAdminOnly: "The list of courses is for admins; enter a course id above.",
    noCoursesYours: "The catalog lists no course taught by you yet.",
    staffOnly: "This dashboard is for instructors and admins. You are signed in as {role}, which cannot read " +
      "course statistics; students send feedback with the feedback form.",
    notYourCourse: "This course is not one of yours, so its numbers are not shown (the catalog says who teaches a course).",
    withheld: "Fewer than {n} responses: withheld to protect students.",
    withheldNoN: "Fewer responses than the minimum: withheld to protect students.",
    refreshed: "Refreshed {t}", stale: "Could not refresh; what is shown may be out of date: {m}",
    badCourse: "A course id is letters, digits and _ . : - only, at most 64 characters", badDate: "A date is written YYYY-MM-DD",
    badRange: "The dates do not make a range (from after to, or more than 366 days)", badCursor: "The page expired; back to the first page",
    rateLimited: "Too many requests; try again shortly", unavailable: "The service is unavailable; try again shortly",
    internal: "The service failed; try again shortly", notFound: "No such comment or resource",
    downloading: "Downloading…", failed: "Request failed: {m}", noCourses: "No courses yet", points: "{n}",
    queue: "Comments to review (words were masked)", queueHint: "“Hide” takes a comment out of the listing and the CSV (its rating still counts); “Keep” leaves it listed. Either marks it reviewed.",
    queueEmpty: "Nothing to review", more: "More", log: "Moderation log", logEmpty: "No moderation yet",
    who: "By", action: "Action", feedbackId: "Feedback id", courseCol: "Course",
    act_hide: "hide", act_unhide: "unhide", hidden: "Hid {id}", unhidden: "Unhid {id}"
  }
};
const $ = (id) => document.getElementById(id);
const COURSE_RE = /^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$/;
const DATE_RE = /^\d{4}-\d{2}-\d{2}$/;
let lang = localStorage.getItem("feedback.lang") || (navigator.language.startsWith("zh") ? "zh" : "en");
const hashParams = () => new URLSearchParams(location.hash.slice(1));
let course = hashParams().get("course") || "";
let view = hashParams().has("moderation") ? "moderation" : "courses";
let cursors = [null];   // cursors[i] opens page i of the comments
let pageIndex = 0;
let lastStats = null, lastTrend = null, lastItems = null, lastCourses = null, lastQueue = null, lastLog = null;
let catalog = new Map(); // course_id -> {title, term}, from the public GET /v1/catalog
let wasSignedIn = false, started = false;
// The service's FEEDBACK_MIN_RESPONSES, filled into the page; null if not.
const MIN_RESPONSES = (() => {
  const meta = document.querySelector('meta[name="feedback-min-responses"]');
  const n = Number(meta && meta.content);
  return Number.isInteger(n) && n > 1 ? n : null;
})();

const auth = window.FeedbackAuth.start({page: "admin", onChange: authChanged});
const oidc = auth.mode === "oidc";

function t(key, vars) {
  let s = (TEXT[lang] && TEXT[lang][key]) || TEXT.en[key] || key;
  for (const [k, v] of Object.entries(vars || {})) s = s.replace("{" + k + "}", v);
  return s;
}
function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
// One date format on every screen: ISO 8601, in UTC like the trend's days.
function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toISOString().slice(0, 19).replace("T", " ") + " UTC";
}
const nowText = () => fmtTime(new Date().toISOString());
function fmtNum(x, digits) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }
function setStatus(msg, kind) { const el = $("status"); el.textContent = msg; el.className = kind || "muted"; }
function setModStatus(msg, kind) { const el = $("modStatus"); el.textContent = msg; el.className = kind || "muted"; }
function el(tag, cls, textContent) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (textContent !== undefined) node.textContent = textContent;
  return node;
}

// Signed in (identity provider) or holding a pasted token (shared secret).
function haveCredentials() { return oidc ? auth.state === "signedIn" : Boolean(auth.secretToken()); }
// A student signed in: the dashboard is not for them (the API answers 403).
function wrongRole() { return oidc && auth.state === "signedIn" && auth.user && auth.user.role === "student"; }
function canRead() { return haveCredentials() && !wrongRole(); }
// The moderation view and the hide buttons: admins only (the token's role;
// the API checks it again).
function isAdmin() { return haveCredentials() && auth.role() === "admin"; }

function applyLang() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((node) => { node.textContent = t(node.dataset.i18n); });
  document.querySelectorAll("[data-i18n-ph]").forEach((node) => { node.placeholder = t(node.dataset.i18nPh); });
  document.title = t("title");
  $("lang").textContent = lang === "zh" ? "English" : "中文";
  $("lang").lang = lang === "zh" ? "en" : "zh-CN";
  drawTitle();
  if (lastCourses) drawCourses(lastCourses);
  if (lastStats) drawStats(lastStats);
  if (lastTrend) drawTrend(lastTrend);
  if (lastItems) drawItems(lastItems);
  if (lastQueue) drawQueue();
  if (lastLog) drawLog(lastLog);
  $("pageNo").textContent = course ? t("page", {n: pageIndex + 1}) : "";
  renderAuth();
}

function renderAuth() {
  $("tokenForm").hidden = oidc;
  const said = auth.render(lang, t("signInHint"));
  let message = said.text, kind = said.kind;
  if (!message && wrongRole()) { message = t("staffOnly", {role: auth.roleText(lang)}); kind = "warn"; }
  $("banner").hidden = !message;
  $("banner").textContent = message;
  $("banner").className = "banner" + (kind ? " " + kind : "");
  const admin = isAdmin();
  document.body.classList.toggle("admin", admin);
  $("views").hidden = !admin;
  showView(admin ? view : "courses");
}

function showView(which) {
  $("courseView").hidden = which !== "courses";
  $("moderationView").hidden = which !== "moderation";
  $("viewCourses").setAttribute("aria-pressed", String(which === "courses"));
  $("viewModeration").setAttribute("aria-pressed", String(which === "moderation"));
}
function chooseView(which) {
  view = which;
  history.replaceState(null, "", which === "moderation" ? "#moderation" : course ? "#course=" + encodeURIComponent(course) : "#");
  showView(which);
  refresh();
}

function authChanged() {
  renderAuth();
  if (auth.state === "starting") return;
  if (!started && !course && COURSE_RE.test(hashParams().get("course") || "")) {
    // Back from the provider: the sign-in restored the #course= the page had.
    course = hashParams().get("course");
    $("course").value = course;
    drawTitle();
  }
  const now = canRead();
  if (!started || (now && !wasSignedIn)) refresh();
  if (!now && wasSignedIn) clearData();
  started = true;
  wasSignedIn = now;
}

class ApiError extends Error {
  constructor(status, message, code) { super(message); this.status = status; this.code = code; }
}
// The error's words in the page's language, from its code; the server's
// own (English) message only for a code this page does not know.
function errorText(status, code, field, message) {
  if (status === 401) return oidc ? auth.text(lang, "expired") : t("unauthorized");
  if (code === "not_your_course") return t("notYourCourse");
  if (status === 403) return oidc ? t("forbiddenAccount") : t("forbidden");
  if (code === "invalid_value" && field === "course_id") return t("badCourse");
  if (code === "invalid_value" && (field === "from" || field === "to")) return t("badRange");
  if (code === "invalid_cursor") return t("badCursor");
  if (code === "rate_limited") return t("rateLimited");
  if (code === "unavailable") return t("unavailable");
  if (code === "internal") return t("internal");
  if (code === "not_found") return t("notFound");
  return message || String(status);
}
async function api(path, init) {
  if (!haveCredentials()) throw new ApiError(401, oidc ? t("needSignIn") : t("needToken"));
  const res = await auth.fetch(path, Object.assign({cache: "no-store"}, init || {}));
  if (!res.ok) {
    let message = res.statusText, code, field;
    try { ({message, code, field} = (await res.json()).error); } catch (_) { /* not JSON */ }
    throw new ApiError(res.status, errorText(res.status, code, field, message), code);
  }
  return res;
}
const coursePath = (suffix) => "/v1/courses/" + encodeURIComponent(course) + suffix;

// --- The course list and the course field's suggestions ---

async function loadCatalog() {
  try {
    const res = await fetch("/v1/catalog", {cache: "no-cache"});
    if (!res.ok) return;
    const body = await res.json();
    catalog = new Map((body.courses || []).map((c) => [c.course_id, c]));
    const ids = $("courseIds");
    ids.replaceChildren(...[...catalog.values()].map((c) => {
      const opt = document.createElement("option");
      opt.value = c.course_id;
      opt.label = c.title + (c.term ? " (" + c.term + ")" : "");
      return opt;
    }));
    drawTitle();
    if (lastCourses) drawCourses(lastCourses);
  } catch (_) { /* no catalog: ids alone */ }
}

function courseNote(message, kind) {
  $("courses").replaceChildren(el("li", "note " + kind, message));
}
async function loadCourses() {
  const body = await (await api("/v1/courses?limit=200")).json();
  lastCourses = body.items || [];
  drawCourses(lastCourses);
}
function drawCourses(items) {
  // An instructor's list holds their courses only: empty means none assigned, not no feedback.
  const instructor = auth.role() === "instructor";
  if (!items.length) return courseNote(t(instructor ? "noCoursesYours" : "noCourses"), "muted");
  $("courses").replaceChildren(...items.map((c) => {
    const li = document.createElement("li");
    const button = el("button", "course");
    button.type = "button";
    button.dataset.course = c.course_id;
    button.setAttribute("aria-current", String(c.course_id === course));
    const name = el("span", "id", c.course_id);
    const entry = catalog.get(c.course_id);
    if (entry) name.append(el("span", "title", entry.title));
    button.append(name, el("span", "muted", c.responses + " · " + fmtNum(c.average, 2)));
    button.addEventListener("click", () => selectCourse(c.course_id));
    li.append(button);
    return li;
  }));
}

// --- One course: its numbers, charts and comments ---

function drawTitle() {
  if (!course) { $("courseTitle").textContent = t("pickCourse"); return; }
  const title = (lastStats && lastStats.title) || (catalog.get(course) || {}).title;
  $("courseTitle").textContent = title ? course + " · " + title : course;
}

function setNumber(id, value, shown) {
  $(id).textContent = shown;
  if (value === null || value === undefined) delete $(id).dataset.value; else $(id).dataset.value = String(value);
}
function drawStats(s) {
  drawTitle();
  const withheld = s.withheld === true;
  $("withheld").hidden = !withheld;
  $("withheld").textContent = withheld ? (MIN_RESPONSES ? t("withheld", {n: MIN_RESPONSES}) : t("withheldNoN")) : "";
  setNumber("responses", s.responses, String(s.responses));
  setNumber("average", s.average, fmtNum(s.average, 2));
  setNumber("median", s.median, fmtNum(s.median, 1));
  setNumber("stddev", s.stddev, fmtNum(s.stddev, 2));
  const rate = s.response_rate, known = rate !== null && rate !== undefined;
  setNumber("responseRate", rate, known ? Math.round(rate * 100) + "%" : "–");
  if (known) $("responseRate").append(el("small", "", t("rateOf", {n: s.responses, of: s.enrolled})));
  setNumber("updated", s.updated_at, fmtTime(s.updated_at));
  $("source").textContent = s.source ? t(s.source) : "–";
  if (withheld || !s.distribution) { $("bars").replaceChildren(); return; }
  $("bars").innerHTML = barChart([1, 2, 3, 4, 5].map((r) => s.distribution[String(r)] || 0));
}

// SVG presentation attributes (fill, stroke) are not CSS: the page's CSP allows them.
function barChart(counts) {
  const W = 360, H = 220, pad = 28, max = Math.max(1, ...counts), total = counts.reduce((a, b) => a + b, 0);
  const bw = (W - pad * 2) / counts.length;
  const pct = (n) => (total ? Math.round(100 * n / total) + "%" : "0%");
  const alt = t("barsAlt", {list: counts.map((n, i) => t("stars", {n: i + 1}) + ": " + n + " (" + pct(n) + ")").join(", ")});
  let svg = "<svg viewBox='0 0 " + W + " " + H + "' role='img' aria-label='" + esc(alt) + "'>";
  svg += "<line x1='" + pad + "' y1='" + (H - pad) + "' x2='" + (W - pad) + "' y2='" + (H - pad) + "' stroke='#c9ced6'/>";
  counts.forEach((n, i) => {
    const h = (H - pad * 2) * n / max, x = pad + i * bw + bw * 0.15, y = H - pad - h;
    svg += "<rect x='" + x + "' y='" + y + "' width='" + bw * 0.7 + "' height='" + h + "' rx='3' fill='#1d5fbf'></rect>";
    svg += "<text x='" + (x + bw * 0.35) + "' y='" + (y - 4) + "' text-anchor='middle'>" + n + (total ? " · " + pct(n) : "") + "</text>";
    svg += "<text x='" + (x + bw * 0.35) + "' y='" + (H - pad + 15) + "' text-anchor='middle'>" + (i + 1) + "★</text>";
  });
  return svg + "</svg>";
}

function drawTrend(tr) {
  const points = tr.points || [];
  const withheld = tr.withheld === true || (lastStats && lastStats.withheld === true);
  $("trendTable").hidden = withheld || !points.length;
  if (withheld || !points.length) { $("line").replaceChildren(); $("trendRows").replaceChildren(); return; }
  $("line").innerHTML = lineChart(tr, points);
  $("trendRows").replaceChildren(...points.map((p) => {
    const row = document.createElement("tr");
    row.append(el("td", "", p.start), el("td", "", String(p.count)), el("td", "", fmtNum(p.average, 2)));
    return row;
  }));
}

function lineChart(tr, points) {
  const W = 600, H = 240, L = 30, R = 36, T = 12, B = 30, n = points.length;
  const iw = W - L - R, ih = H - T - B, maxCount = Math.max(1, ...points.map((p) => p.count));
  const x = (i) => L + iw * (i + 0.5) / Math.max(1, n);   // the middle of bucket i
  const yAvg = (a) => T + ih - ih * (a - 1) / 4;
  const yCount = (c) => T + ih - ih * c / maxCount;
  const rated = points.filter((p) => p.average !== null);
  const total = points.reduce((a, p) => a + p.count, 0);
  const alt = rated.length
    ? t("lineAlt", {bucket: t(tr.bucket === "week" ? "byWeek" : "byDay"), from: tr.from, to: tr.to, n, total,
      min: fmtNum(Math.min(...rated.map((p) => p.average)), 2), max: fmtNum(Math.max(...rated.map((p) => p.average)), 2)})
    : t("lineAltEmpty", {from: tr.from, to: tr.to});
  let svg = "<svg viewBox='0 0 " + W + " " + H + "' role='img' aria-label='" + esc(alt) + "'>";
  for (let a = 1; a <= 5; a++) {
    svg += "<line x1='" + L + "' x2='" + (W - R) + "' y1='" + yAvg(a) + "' y2='" + yAvg(a) + "' stroke='#eef0f3'/>";
    svg += "<text x='" + (L - 6) + "' y='" + (yAvg(a) + 4) + "' text-anchor='end'>" + a + "</text>";
  }
  svg += "<text x='" + (W - R + 6) + "' y='" + (T + 8) + "'>" + maxCount + "</text>";
  svg += "<text x='" + (W - R + 6) + "' y='" + (T + ih) + "'>0</text>";
  const bw = Math.max(1, Math.min(18, iw / Math.max(1, n) * 0.6));
  points.forEach((p, i) => {
    if (!p.count) return;
    const y = yCount(p.count);
    svg += "<rect x='" + (x(i) - bw / 2) + "' y='" + y + "' width='" + bw + "' height='" + (T + ih - y) +
      "' fill='#c8d9f5'><title>" + esc(p.start) + ": " + p.count + "</title></rect>";
  });
  let path = "", pen = "M";
  points.forEach((p, i) => {
    if (p.average === null) { pen = "M"; return; }
    path += pen + x(i).toFixed(1) + " " + yAvg(p.average).toFixed(1) + " "; pen = "L";
  });
  if (path) svg += "<path d='" + path + "' fill='none' stroke='#1d5fbf' stroke-width='2'/>";
  points.forEach((p, i) => {
    if (p.average === null) return;
    svg += "<circle cx='" + x(i) + "' cy='" + yAvg(p.average) + "' r='3' fill='#1d5fbf'><title>" + esc(p.start) +
      ": " + fmtNum(p.average, 2) + " (" + t("points", {n: p.count}) + ")</title></circle>";
  });
  // Full ISO dates, as few as fit: the same format as every other date here.
  const every = Math.max(1, Math.ceil(n / 5));
  points.forEach((p, i) => {
    if (i % every) return;
    svg += "<text x='" + x(i) + "' y='" + (H - 10) + "' text-anchor='middle'>" + esc(p.start) + "</text>";
  });
  return svg + "</svg>";
}

async function loadStats() { lastStats = await (await api(coursePath("/stats"))).json(); drawStats(lastStats); }

// Until the admin picks dates, the range is the service's default (the last
// 30 days) and moves with the clock: a dashboard left open overnight shows
// the new day.
let datesChosen = false;
async function loadTrend() {
  const q = new URLSearchParams({bucket: $("bucket").value});
  if (datesChosen && $("from").value) q.set("from", $("from").value);
  if (datesChosen && $("to").value) q.set("to", $("to").value);
  lastTrend = await (await api(coursePath("/trend?" + q))).json();
  if (!datesChosen) { $("from").value = lastTrend.from; $("to").value = lastTrend.to; }
  drawTrend(lastTrend);
}
function chooseDates() {
  const bad = ["from", "to"].filter((id) => $(id).value && !DATE_RE.test($(id).value.trim()));
  ["from", "to"].forEach((id) => { if (bad.includes(id)) $(id).setAttribute("aria-invalid", "true"); else $(id).removeAttribute("aria-invalid"); });
  if (bad.length) { setStatus(t("badDate"), "err"); return; }
  datesChosen = Boolean($("from").value || $("to").value);
  if (course) run(loadTrend);
}

// A hide or unhide this page did lately, shown at once: the listing
// reflects it within a few seconds, and a refresh meanwhile must not undo it.
const pending = new Map();   // feedback_id -> {hidden, until}
function hiddenNow(item) {
  const p = pending.get(item.feedback_id);
  if (p && p.until > Date.now()) return p.hidden;
  pending.delete(item.feedback_id);
  return item.hidden === true;
}

async function loadComments() {
  const q = new URLSearchParams({limit: "20"});
  if (isAdmin()) q.set("include_hidden", "true");
  if (cursors[pageIndex]) q.set("cursor", cursors[pageIndex]);
  let body;
  try { body = await (await api(coursePath("/feedback?" + q))).json(); }
  catch (err) {
    // A cursor the service no longer takes (issued for another course, or damaged): start over at page one.
    if (!(err instanceof ApiError && err.code === "invalid_cursor" && pageIndex > 0)) throw err;
    cursors = [null]; pageIndex = 0;
    return loadComments();
  }
  cursors.length = pageIndex + 1;
  if (body.next_cursor) cursors.push(body.next_cursor);
  lastItems = body;
  drawItems(body);
}
function drawItems(body) {
  const rows = $("items");
  const admin = isAdmin();
  if (!body.items.length) {
    const cell = el("td", "muted", t("noComments"));
    cell.colSpan = 4;
    const tr = document.createElement("tr");
    tr.append(cell);
    rows.replaceChildren(tr);
  } else {
    rows.replaceChildren(...body.items.map((item) => {
      const hidden = hiddenNow(item);
      const tr = el("tr", hidden ? "hidden-item" : "");
      tr.dataset.id = item.feedback_id;
      const stars = el("td", "stars", "★".repeat(item.rating) + "☆".repeat(5 - item.rating));
      stars.setAttribute("aria-label", t("stars", {n: item.rating}));
      const comment = el("td", "comment");
      if (item.flagged) comment.append(el("span", "badge", t("flagged")));
      if (hidden) comment.append(el("span", "badge off", t("hiddenBadge")));
      comment.append(item.comment || "");
      tr.append(el("td", "when", fmtTime(item.submitted_at)), stars, comment);
      if (admin) {
        const cell = el("td", "actions");
        cell.append(actionButton(hidden ? "unhide" : "hide", item.feedback_id));
        tr.append(cell);
      }
      return tr;
    }));
  }
  $("prev").disabled = pageIndex === 0;
  $("next").disabled = !body.next_cursor;
  $("pageNo").textContent = t("page", {n: pageIndex + 1});
}

// --- Moderation (admins) ---

function actionButton(action, id, label) {
  const button = el("button", "small" + (action === "hide" ? "" : " ghost"), t(label || action));
  button.type = "button";
  button.dataset.action = action;
  button.addEventListener("click", () => moderate(action, id, button));
  return button;
}
async function moderate(action, id, button) {
  button.disabled = true;
  const ok = await run(async () => {
    await api("/v1/feedback/" + encodeURIComponent(id) + "/" + action, {method: "POST"});
    pending.set(id, {hidden: action === "hide", until: Date.now() + 10000});
    const done = t(action === "hide" ? "hidden" : "unhidden", {id});
    setStatus(done, "ok");
    setModStatus(done, "ok");
  }, view === "moderation" ? setModStatus : setStatus, false);
  if (!ok) { button.disabled = false; return; }
  if (lastItems) drawItems(lastItems);
  if (lastQueue) { lastQueue.items = lastQueue.items.filter((item) => item.feedback_id !== id); drawQueue(); }
  run(loadLog, setModStatus);
}

async function loadQueue(more) {
  const q = new URLSearchParams({limit: "20"});
  if (more && lastQueue && lastQueue.next_cursor) q.set("cursor", lastQueue.next_cursor);
  const body = await (await api("/v1/moderation?" + q)).json();
  lastQueue = more && lastQueue ? {items: lastQueue.items.concat(body.items), next_cursor: body.next_cursor} : body;
  drawQueue();
}
function drawQueue() {
  const items = lastQueue.items;
  if (!items.length) {
    const cell = el("td", "muted", t("queueEmpty"));
    cell.colSpan = 4;
    const tr = document.createElement("tr");
    tr.append(cell);
    $("queue").replaceChildren(tr);
  } else {
    $("queue").replaceChildren(...items.map((item) => {
      const tr = document.createElement("tr");
      tr.dataset.id = item.feedback_id;
      const actions = el("td", "actions row");
      actions.append(actionButton("hide", item.feedback_id), actionButton("unhide", item.feedback_id, "keep"));
      tr.append(el("td", "when", fmtTime(item.submitted_at)), el("td", "", item.course_id),
        el("td", "comment", item.comment || ""), actions);
      return tr;
    }));
  }
  $("queueMore").hidden = !lastQueue.next_cursor;
}
async function loadLog() {
  lastLog = await (await api("/v1/moderation/log")).json();
  drawLog(lastLog);
}
function drawLog(body) {
  const items = body.items || [];
  if (!items.length) {
    const cell = el("td", "muted", t("logEmpty"));
    cell.colSpan = 4;
    const tr = document.createElement("tr");
    tr.append(cell);
    $("log").replaceChildren(tr);
    return;
  }
  $("log").replaceChildren(...items.map((item) => {
    const tr = document.createElement("tr");
    tr.append(el("td", "when", fmtTime(item.at)), el("td", "", item.sub),
      el("td", "", t("act_" + item.action)), el("td", "", item.feedback_id));
    return tr;
  }));
}

// --- Keeping what is shown true ---

// Nothing read with a credential, or for another course, stays on screen.
function clearCourseData() {
  lastStats = null; lastTrend = null; lastItems = null;
  ["responses", "average", "median", "stddev", "responseRate", "updated", "source"].forEach((id) => setNumber(id, null, "–"));
  $("withheld").hidden = true;
  $("bars").replaceChildren(); $("line").replaceChildren(); $("items").replaceChildren();
  $("trendRows").replaceChildren(); $("trendTable").hidden = true;
  $("prev").disabled = true; $("next").disabled = true;
  $("courseData").classList.remove("stale");
}
function clearData() {
  lastCourses = null; lastQueue = null; lastLog = null;
  $("courses").replaceChildren();
  $("queue").replaceChildren(); $("log").replaceChildren(); $("queueMore").hidden = true;
  clearCourseData();
  setStatus(""); setModStatus("");
}

// Runs a load; on failure of one of the course's (`guardsCourse`), first
// clears what it would have replaced (refused outright: another course's,
// a bad id, no access) or greys it (the service failed: kept, marked out of
// date), then says what went wrong.
async function run(task, status = setStatus, guardsCourse = status === setStatus) {
  try { await task(); return true; }
  catch (err) {
    const known = err instanceof ApiError;
    // Signed out by a 401: the banner says so, and the data is gone.
    if (oidc && known && err.status === 401 && auth.state !== "signedIn") { clearData(); return false; }
    let message = known ? err.message : t("failed", {m: err.message});
    if (guardsCourse) {
      if (known && err.status >= 400 && err.status < 500 && err.status !== 429) clearCourseData();
      else if (lastStats || lastItems) { $("courseData").classList.add("stale"); message = t("stale", {m: message}); }
    }
    status(message, "err");
    return false;
  }
}

async function refresh() {
  if (!canRead()) {
    if (!wrongRole() && !(oidc && auth.state === "starting")) setStatus(oidc ? t("needSignIn") : t("needToken"), "err");
    return;
  }
  if (isAdmin() && view === "moderation") {
    if (await run(() => Promise.all([loadQueue(false), loadLog()]), setModStatus)) {
      setModStatus(t("refreshed", {t: nowText()}), "ok");
    }
    return;
  }
  // The course list (admins) and the chosen course (admins, its instructors)
  // are read separately: an instructor refused the list still reads a course.
  let listOk = true;
  try { await loadCourses(); }
  catch (err) {
    listOk = false;
    if (!canRead()) return run(() => { throw err; });
    const adminOnly = err instanceof ApiError && err.status === 403 && err.code === "forbidden";
    courseNote(adminOnly ? t("listAdminOnly") : err instanceof ApiError ? err.message : t("failed", {m: err.message}), "err");
  }
  if (!course) {
    if (listOk) setStatus(t("refreshed", {t: nowText()}), "ok");
    return;
  }
  const shown = course;
  const ok = await run(async () => {
    await loadStats();
    await loadTrend();
    if (pageIndex === 0) await loadComments();   // later pages stay put while being read
  });
  if (ok && shown === course) {
    $("courseData").classList.remove("stale");
    setStatus(t("refreshed", {t: nowText()}), "ok");
  }
}

function selectCourse(id) {
  if (!COURSE_RE.test(id)) { $("course").setAttribute("aria-invalid", "true"); setStatus(t("badCourse"), "err"); return; }
  $("course").removeAttribute("aria-invalid");
  // The previous course's numbers go before anything of the new one is asked for.
  clearCourseData();
  course = id;
  history.replaceState(null, "", "#course=" + encodeURIComponent(id));
  $("course").value = id;
  drawTitle();
  setStatus("");
  cursors = [null]; pageIndex = 0;
  document.querySelectorAll("#courses button.course").forEach((b) => b.setAttribute("aria-current", String(b.dataset.course === id)));
  refresh();
}

// A link cannot carry the Authorization header: fetch the CSV, then save the Blob.
async function downloadCsv() {
  if (!course) return;
  setStatus(t("downloading"));
  await run(async () => {
    const blob = await (await api(coursePath("/feedback.csv"))).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = course + "-feedback.csv";
    document.body.appendChild(link); link.click(); link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 30000);
    setStatus("✓ " + link.download, "ok");
  }, setStatus, false);
}

$("tokenForm").addEventListener("submit", (e) => {
  e.preventDefault();
  clearData();
  auth.setSecretToken($("token").value);
  $("token").value = "";
  renderAuth();
  refresh();
});
$("forget").addEventListener("click", () => {
  auth.setSecretToken("");
  clearData();
  renderAuth();
  setStatus(t("needToken"), "err");
});
$("signIn").addEventListener("click", () => auth.signIn());
$("signOut").addEventListener("click", () => { clearData(); auth.signOut(); });
$("courseForm").addEventListener("submit", (e) => { e.preventDefault(); selectCourse($("course").value.trim()); });
$("lang").addEventListener("click", () => { lang = lang === "zh" ? "en" : "zh"; localStorage.setItem("feedback.lang", lang); applyLang(); });
$("viewCourses").addEventListener("click", () => chooseView("courses"));
$("viewModeration").addEventListener("click", () => chooseView("moderation"));
$("bucket").addEventListener("change", () => { if (course) run(loadTrend); });
$("from").addEventListener("change", chooseDates);
$("to").addEventListener("change", chooseDates);
$("prev").addEventListener("click", () => { if (pageIndex > 0) { pageIndex--; run(loadComments); } });
$("next").addEventListener("click", () => { if (cursors[pageIndex + 1]) { pageIndex++; run(loadComments); } });
$("csv").addEventListener("click", downloadCsv);
$("queueMore").addEventListener("click", () => run(() => loadQueue(true), setModStatus));

applyLang();
if (course) $("course").value = course;
loadCatalog();
setInterval(() => { if (document.visibilityState === "visible" && canRead()) refresh(); }, 5000);
})();
