// The dashboard (GET /admin on query). Sign-in comes from /oidc.js.
"use strict";
(() => {
const TEXT = {
  zh: {
    title: "课程反馈管理", tokenPh: "管理员令牌 (JWT)", useToken: "使用令牌", forget: "清除",
    findCourse: "查找课程", show: "查看", topCourses: "反馈最多的课程", pickCourse: "请选择课程",
    responses: "回答人数", average: "平均分", updated: "更新时间", source: "数据来源",
    distribution: "评分分布", trend: "趋势", byDay: "按天", byWeek: "按周",
    trendHint: "折线：平均分（左轴 1–5）；柱：回答数（右轴）；日期按 UTC",
    comments: "最新评论", prev: "上一页", next: "下一页", csv: "下载 CSV",
    when: "时间", rating: "评分", comment: "评论", noComments: "暂无评论", page: "第 {n} 页",
    cache: "缓存", database: "数据库", needToken: "请先输入管理员令牌",
    needSignIn: "请先登录（教师或管理员账号）",
    signInHint: "此页面供教师和管理员查看课程反馈统计，请先登录。",
    unauthorized: "令牌无效或已过期", forbidden: "此令牌没有查看权限（需要管理员或该课程的教师）",
    forbiddenAccount: "此账号没有查看权限（需要教师或管理员角色）",
    listAdminOnly: "课程列表仅供管理员查看；请在上方输入课程编号。",
    noCoursesYours: "目前没有分配给您的课程（课程目录尚未启用）；可在上方输入课程编号。",
    staffOnly: "此页面供教师和管理员使用。您当前以{role}身份登录，无法查看课程统计；学生请使用反馈表单提交反馈。",
    notYourCourse: "此课程不在您的授课课程中，无法查看其数据。教师可查看的课程由课程目录指定（课程目录尚未上线，目前没有分配给教师的课程）。",
    refreshed: "已刷新 {t}", badCourse: "课程编号只能包含字母、数字和 _ . : -",
    downloading: "正在下载…", failed: "请求失败：{m}", noCourses: "暂无课程", points: "{n} 条"
  },
  en: {
    title: "Course feedback admin", tokenPh: "Admin token (JWT)", useToken: "Use token", forget: "Forget",
    findCourse: "Find a course", show: "Show", topCourses: "Courses with the most feedback", pickCourse: "Pick a course",
    responses: "Responses", average: "Average", updated: "Updated", source: "Source",
    distribution: "Rating distribution", trend: "Trend", byDay: "By day", byWeek: "By week",
    trendHint: "Line: average (left axis, 1–5); bars: responses (right axis); days in UTC",
    comments: "Latest comments", prev: "Previous", next: "Next", csv: "Download CSV",
    when: "When", rating: "Rating", comment: "Comment", noComments: "No comments yet", page: "Page {n}",
    cache: "cache", database: "database", needToken: "Enter an admin token first",
    needSignIn: "Sign in first (an instructor or admin account)",
    signInHint: "This dashboard shows course feedback to instructors and admins; please sign in.",
    unauthorized: "The token is invalid or expired", forbidden: "This token may not read this (it needs the admin role, or the course's instructor)",
    forbiddenAccount: "This account may not read statistics (it needs the instructor or admin role)",
    listAdminOnly: "The list of courses is for admins; enter a course id above.",
    noCoursesYours: "No course is assigned to you yet (the course catalog is not in place); enter a course id above.",
    staffOnly: "This dashboard is for instructors and admins. You are signed in as {role}, which cannot read " +
      "course statistics; students send feedback with the feedback form.",
    notYourCourse: "This course is not one of yours, so its numbers are not shown. The courses an instructor " +
      "reads are assigned in the course catalog (not in place yet, so no course is assigned to an instructor for now).",
    refreshed: "Refreshed {t}", badCourse: "A course id is letters, digits and _ . : - only",
    downloading: "Downloading…", failed: "Request failed: {m}", noCourses: "No courses yet", points: "{n}"
  }
};
const $ = (id) => document.getElementById(id);
const COURSE_RE = /^[A-Za-z0-9_.:\-]{1,64}$/;
let lang = localStorage.getItem("feedback.lang") || (navigator.language.startsWith("zh") ? "zh" : "en");
const courseInHash = () => new URLSearchParams(location.hash.slice(1)).get("course") || "";
let course = courseInHash();
let cursors = [null];   // cursors[i] opens page i of the comments
let pageIndex = 0;
let lastStats = null, lastTrend = null;
let wasSignedIn = false, started = false;

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
function fmtTime(iso) {
  if (!iso) return "–";
  return new Date(iso).toLocaleString(lang === "zh" ? "zh-CN" : "en-GB", {hour12: false});
}
function fmtAvg(x) { return x === null || x === undefined ? "–" : x.toFixed(2); }
function setStatus(msg, kind) { const el = $("status"); el.textContent = msg; el.className = kind || "muted"; }

// Signed in (identity provider) or holding a pasted token (shared secret).
function haveCredentials() { return oidc ? auth.state === "signedIn" : Boolean(auth.secretToken()); }
// A student signed in: the dashboard is not for them (the API answers 403).
function wrongRole() { return oidc && auth.state === "signedIn" && auth.user && auth.user.role === "student"; }
function canRead() { return haveCredentials() && !wrongRole(); }

function applyLang() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.querySelectorAll("[data-i18n-ph]").forEach((el) => { el.placeholder = t(el.dataset.i18nPh); });
  document.title = t("title");
  $("lang").textContent = lang === "zh" ? "English" : "中文";
  if (course) $("courseTitle").textContent = course;
  if (lastStats) drawStats(lastStats);
  if (lastTrend) drawTrend(lastTrend);
  $("pageNo").textContent = course ? t("page", {n: pageIndex + 1}) : "";
  renderAuth();
}

function renderAuth() {
  $("tokenForm").hidden = oidc;
  $("auth").hidden = !oidc;
  if (!oidc) return;
  const st = auth.state, at = (key, vars) => auth.text(lang, key, vars);
  const user = st === "signedIn" && auth.user ? auth.user : null;
  $("who").textContent = user ? at("signedInAs", {name: user.name}) : st === "signingIn" ? at("signingIn") : "";
  $("role").hidden = !user;
  $("role").textContent = user ? auth.roleText(lang) : "";
  $("signIn").hidden = st === "signedIn" || st === "signingIn" || st === "starting";
  $("signOut").hidden = st !== "signedIn";
  $("signIn").textContent = at("signIn");
  $("signOut").textContent = at("signOut");
  let message = "", kind = "";
  if (auth.error) { message = auth.errorText(lang); kind = "err"; }
  else if (st === "expired") { message = at("expired"); kind = "err"; }
  else if (wrongRole()) { message = t("staffOnly", {role: auth.roleText(lang)}); kind = "warn"; }
  else if (st === "signedOut") { message = (auth.notice ? at(auth.notice) + " " : "") + t("signInHint"); }
  $("banner").hidden = !message;
  $("banner").textContent = message;
  $("banner").className = "banner" + (kind ? " " + kind : "");
}

function authChanged() {
  renderAuth();
  if (auth.state === "starting") return;
  if (!started && !course && COURSE_RE.test(courseInHash())) {
    // Back from the provider: the sign-in restored the #course= the page had.
    course = courseInHash();
    $("course").value = course;
    $("courseTitle").textContent = course;
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
async function api(path) {
  if (!haveCredentials()) throw new ApiError(401, oidc ? t("needSignIn") : t("needToken"));
  const res = await auth.fetch(path, {cache: "no-store"});
  if (!res.ok) {
    let message = res.statusText, code;
    try { ({message, code} = (await res.json()).error); } catch (_) { /* not JSON */ }
    if (res.status === 401) message = oidc ? auth.text(lang, "expired") : t("unauthorized");
    else if (code === "not_your_course") message = t("notYourCourse");
    else if (res.status === 403 && code === "forbidden") message = oidc ? t("forbiddenAccount") : t("forbidden");
    throw new ApiError(res.status, message || res.statusText || String(res.status), code);
  }
  return res;
}
const coursePath = (suffix) => "/v1/courses/" + encodeURIComponent(course) + suffix;

function courseNote(message, kind) {
  const list = $("courses");
  list.innerHTML = "";
  const li = document.createElement("li");
  li.className = kind;
  li.textContent = message;
  list.appendChild(li);
}

async function loadCourses() {
  const body = await (await api("/v1/courses?limit=200")).json();
  const items = body.items || [];
  const list = $("courses"), ids = $("courseIds");
  list.innerHTML = ""; ids.innerHTML = "";
  // An instructor's list holds their courses only: empty means none assigned, not no feedback.
  const instructor = oidc && auth.user && auth.user.role === "instructor";
  if (!items.length) courseNote(t(instructor ? "noCoursesYours" : "noCourses"), "muted");
  for (const c of items) {
    const li = document.createElement("li");
    li.className = c.course_id === course ? "on" : "";
    const id = document.createElement("span"), numbers = document.createElement("span");
    id.className = "id"; numbers.className = "muted";
    id.textContent = c.course_id;
    numbers.textContent = c.responses + " · " + fmtAvg(c.average);
    li.append(id, numbers);
    li.addEventListener("click", () => selectCourse(c.course_id));
    list.appendChild(li);
    const opt = document.createElement("option"); opt.value = c.course_id; ids.appendChild(opt);
  }
}

function drawStats(s) {
  $("responses").textContent = s.responses;
  $("average").textContent = fmtAvg(s.average);
  $("updated").textContent = fmtTime(s.updated_at);
  $("source").textContent = t(s.source);
  $("bars").innerHTML = barChart([1, 2, 3, 4, 5].map((r) => s.distribution[String(r)] || 0));
}

// SVG presentation attributes (fill, stroke) are not CSS: the page's CSP allows them.
function barChart(counts) {
  const W = 360, H = 220, pad = 28, max = Math.max(1, ...counts), total = counts.reduce((a, b) => a + b, 0);
  const bw = (W - pad * 2) / counts.length;
  let svg = "<svg viewBox='0 0 " + W + " " + H + "' role='img'>";
  svg += "<line x1='" + pad + "' y1='" + (H - pad) + "' x2='" + (W - pad) + "' y2='" + (H - pad) + "' stroke='#c9ced6'/>";
  counts.forEach((n, i) => {
    const h = (H - pad * 2) * n / max, x = pad + i * bw + bw * 0.15, y = H - pad - h;
    const pct = total ? Math.round(100 * n / total) + "%" : "";
    svg += "<rect x='" + x + "' y='" + y + "' width='" + bw * 0.7 + "' height='" + h + "' rx='3' fill='#1d5fbf'><title>" +
      (i + 1) + "★: " + n + "</title></rect>";
    svg += "<text x='" + (x + bw * 0.35) + "' y='" + (y - 4) + "' text-anchor='middle'>" + n + (pct ? " · " + pct : "") + "</text>";
    svg += "<text x='" + (x + bw * 0.35) + "' y='" + (H - pad + 15) + "' text-anchor='middle'>" + (i + 1) + "★</text>";
  });
  return svg + "</svg>";
}

function drawTrend(tr) { $("line").innerHTML = lineChart(tr.points); }

function lineChart(points) {
  const W = 600, H = 240, L = 30, R = 36, T = 12, B = 30, n = points.length;
  const iw = W - L - R, ih = H - T - B, maxCount = Math.max(1, ...points.map((p) => p.count));
  const x = (i) => L + iw * (i + 0.5) / Math.max(1, n);   // the middle of bucket i
  const yAvg = (a) => T + ih - ih * (a - 1) / 4;
  const yCount = (c) => T + ih - ih * c / maxCount;
  let svg = "<svg viewBox='0 0 " + W + " " + H + "' role='img'>";
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
      ": " + fmtAvg(p.average) + " (" + t("points", {n: p.count}) + ")</title></circle>";
  });
  const every = Math.max(1, Math.ceil(n / 8));
  points.forEach((p, i) => {
    if (i % every) return;
    svg += "<text x='" + x(i) + "' y='" + (H - 10) + "' text-anchor='middle'>" + esc(p.start.slice(5)) + "</text>";
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
function chooseDates() { datesChosen = Boolean($("from").value || $("to").value); run(loadTrend); }

async function loadComments() {
  const q = new URLSearchParams({limit: "20"});
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
  const rows = $("items");
  rows.innerHTML = "";
  if (!body.items.length) rows.innerHTML = "<tr><td colspan='3' class='muted'>" + esc(t("noComments")) + "</td></tr>";
  for (const item of body.items) {
    const tr = document.createElement("tr");
    tr.innerHTML = "<td class='when'></td><td class='stars'></td><td class='comment'></td>";
    tr.children[0].textContent = fmtTime(item.submitted_at);
    tr.children[1].textContent = "★".repeat(item.rating) + "☆".repeat(5 - item.rating);
    tr.children[2].textContent = item.comment || "";
    rows.appendChild(tr);
  }
  $("prev").disabled = pageIndex === 0;
  $("next").disabled = !body.next_cursor;
  $("pageNo").textContent = t("page", {n: pageIndex + 1});
}

// Nothing read with a credential stays on screen once it is gone.
function clearCourseData() {
  lastStats = null; lastTrend = null;
  ["responses", "average", "updated", "source"].forEach((id) => { $(id).textContent = "–"; });
  $("bars").innerHTML = ""; $("line").innerHTML = ""; $("items").innerHTML = "";
  $("prev").disabled = true; $("next").disabled = true;
}
function clearData() {
  $("courses").innerHTML = ""; $("courseIds").innerHTML = "";
  clearCourseData();
  setStatus("");
}

async function run(task) {
  try { await task(); return true; }
  catch (err) {
    // Signed out by a 401: the banner says so, and the data is gone.
    if (oidc && err instanceof ApiError && err.status === 401 && auth.state !== "signedIn") return false;
    setStatus(err instanceof ApiError ? err.message : t("failed", {m: err.message}), "err");
    if (err instanceof ApiError && err.status === 403 && err.code === "not_your_course") clearCourseData();
    return false;
  }
}

async function refresh() {
  if (!canRead()) {
    if (!wrongRole() && !(oidc && auth.state === "starting")) setStatus(oidc ? t("needSignIn") : t("needToken"), "err");
    return;
  }
  // The course list (admins) and the chosen course (admins, its instructors)
  // are read separately: an instructor refused the list still reads a course.
  let listOk = true;
  try { await loadCourses(); }
  catch (err) {
    listOk = false;
    if (!canRead()) return run(() => { throw err; });
    const adminOnly = err instanceof ApiError && err.status === 403 && err.code === "forbidden" &&
      (!oidc || (auth.user && auth.user.role === "instructor"));
    courseNote(adminOnly ? t("listAdminOnly") : err instanceof ApiError ? err.message : t("failed", {m: err.message}), "err");
  }
  if (!course) {
    if (listOk) setStatus(t("refreshed", {t: new Date().toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB", {hour12: false})}), "ok");
    return;
  }
  const ok = await run(async () => {
    await loadStats();
    await loadTrend();
    if (pageIndex === 0) await loadComments();   // later pages stay put while being read
  });
  if (ok) setStatus(t("refreshed", {t: new Date().toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB", {hour12: false})}), "ok");
}

function selectCourse(id) {
  if (!COURSE_RE.test(id)) { setStatus(t("badCourse"), "err"); return; }
  course = id;
  history.replaceState(null, "", "#course=" + encodeURIComponent(id));
  $("course").value = id;
  $("courseTitle").textContent = id;
  cursors = [null]; pageIndex = 0;
  document.querySelectorAll("#courses li").forEach((li) => li.classList.toggle("on", li.firstChild.textContent === id));
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
  });
}

$("tokenForm").addEventListener("submit", (e) => {
  e.preventDefault();
  auth.setSecretToken($("token").value);
  $("token").value = "";
  refresh();
});
$("forget").addEventListener("click", () => {
  auth.setSecretToken("");
  clearData();
  setStatus(t("needToken"), "err");
});
$("signIn").addEventListener("click", () => auth.signIn());
$("signOut").addEventListener("click", () => { clearData(); auth.signOut(); });
$("courseForm").addEventListener("submit", (e) => { e.preventDefault(); selectCourse($("course").value.trim()); });
$("lang").addEventListener("click", () => { lang = lang === "zh" ? "en" : "zh"; localStorage.setItem("feedback.lang", lang); applyLang(); });
$("bucket").addEventListener("change", () => run(loadTrend));
$("from").addEventListener("change", chooseDates);
$("to").addEventListener("change", chooseDates);
$("prev").addEventListener("click", () => { if (pageIndex > 0) { pageIndex--; run(loadComments); } });
$("next").addEventListener("click", () => { if (cursors[pageIndex + 1]) { pageIndex++; run(loadComments); } });
$("csv").addEventListener("click", downloadCsv);

applyLang();
if (course) $("course").value = course;
setInterval(() => { if (document.visibilityState === "visible" && canRead()) refresh(); }, 5000);
})();
