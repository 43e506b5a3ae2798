// The student feedback form (GET / on ingest). Sign-in comes from /oidc.js.
(() => {
  "use strict";
  const text = {
    zh: {
      title: "课程反馈", course: "课程", courseHint: "选择或输入课程编号（字母、数字和 _ . : -）",
      rating: "评分", comment: "评论（可选）", token: "登录令牌",
      tokenHint: "粘贴学生令牌（仅保存在本标签页中）", submit: "提交反馈", other: "English",
      accepted: "谢谢！您的反馈已收到。编号：", spooled: "谢谢！您的反馈已安全保存，稍后会计入统计。编号：",
      needCourse: "请填写有效的课程编号。", needRating: "请选择 1 到 5 星。", needToken: "请粘贴登录令牌。",
      needSignIn: "请先登录，再提交反馈。", network: "无法连接服务器，请稍后重试。",
      signInToSend: "登录学生账号后即可提交反馈。",
      studentsOnly: "此表单供学生填写。您当前以{role}身份登录，服务不会接受此账号的提交；请使用学生账号登录。",
      signedOutKept: "登录已失效，反馈未发送。请重新登录后再提交（您填写的内容会保留）。",
      codes: {
        unauthorized: "登录令牌无效或已过期，请重新获取。", invalid_token: "登录令牌无效或已过期，请重新获取。",
        forbidden: "此令牌不是学生令牌。",
        rate_limited: "提交太频繁，请稍后再试。", sensitive_content: "评论中含有不允许的词语，请修改后再提交。",
        payload_too_large: "内容太长。", unavailable: "服务暂时繁忙，请稍后重试。",
        invalid_value: "有字段不符合要求：", missing_field: "缺少字段：", invalid_type: "字段类型错误：",
      },
      oidcCodes: { forbidden: "此账号不是学生账号，无法提交反馈。" },
    },
    en: {
      title: "Course feedback", course: "Course", courseHint: "Pick or type a course id (letters, digits and _ . : -)",
      rating: "Rating", comment: "Comment (optional)", token: "Sign-in token",
      tokenHint: "Paste your student token (kept in this tab only)", submit: "Send feedback", other: "中文",
      accepted: "Thank you! Your feedback was received. Reference: ",
      spooled: "Thank you! Your feedback is safely stored and will be counted shortly. Reference: ",
      needCourse: "Please enter a valid course id.", needRating: "Please choose 1 to 5 stars.",
      needToken: "Please paste your sign-in token.", needSignIn: "Please sign in before sending feedback.",
      network: "Could not reach the server; please try again.",
      signInToSend: "Sign in with your student account to send feedback.",
      studentsOnly: "This form is for students. You are signed in as {role}, and the service will not take " +
        "feedback from this account; sign in with a student account.",
      signedOutKept: "Your sign-in has ended and the feedback was not sent. Sign in again and resend " +
        "(what you wrote is kept).",
      codes: {
        unauthorized: "Your token is invalid or expired; please get a new one.",
        invalid_token: "Your token is invalid or expired; please get a new one.",
        forbidden: "This token is not a student token.", rate_limited: "Too many submissions; please wait a moment.",
        sensitive_content: "The comment contains words that are not allowed; please rephrase it.",
        payload_too_large: "The submission is too long.", unavailable: "The service is busy; please retry shortly.",
        invalid_value: "A field is not valid: ", missing_field: "A field is missing: ", invalid_type: "A field has the wrong type: ",
      },
      oidcCodes: { forbidden: "This account is not a student account; it cannot send feedback." },
    },
  };
  const DRAFT_KEY = "feedback.form.draft";
  let lang = localStorage.getItem("feedback.lang") || (navigator.language.startsWith("zh") ? "zh" : "en");
  const $ = (id) => document.getElementById(id);
  const result = $("result");
  let attemptKey = null; // one Idempotency-Key per attempt, so a double click counts once
  let sending = false;
  let lastUser = null;

  const auth = window.FeedbackAuth.start({ page: "form", onChange: renderAuth });
  const oidc = auth.mode === "oidc";

  function applyLang() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = text[lang][el.dataset.i18n]; });
    $("lang").textContent = text[lang].other;
    document.title = text[lang].title;
    renderAuth();
  }
  function show(ok, message) { result.className = ok ? "ok" : "err"; result.textContent = message; }
  function clearResult() { result.className = ""; result.textContent = ""; }

  // A staff account on the student form: say so (the service would answer 403).
  function wrongRole() {
    return oidc && auth.state === "signedIn" && auth.user && (auth.user.role === "instructor" || auth.user.role === "admin");
  }

  function renderAuth() {
    $("tokenField").hidden = oidc;
    $("auth").hidden = !oidc;
    if (!oidc) return;
    const st = auth.state, at = (key, vars) => auth.text(lang, key, vars);
    const user = st === "signedIn" && auth.user ? auth.user : null;
    const userKey = user ? user.name + "/" + user.role : null;
    if (userKey !== lastUser) { attemptKey = null; lastUser = userKey; }
    $("who").textContent = user ? at("signedInAs", {name: user.name})
      : st === "signingIn" ? at("signingIn") : "";
    $("whoBox").hidden = !$("who").textContent;
    $("role").hidden = !user;
    $("role").textContent = user ? auth.roleText(lang) : "";
    $("signIn").hidden = st === "signedIn" || st === "signingIn" || st === "starting";
    $("signOut").hidden = st !== "signedIn";
    $("signIn").textContent = at("signIn");
    $("signOut").textContent = at("signOut");
    let message = "", isErr = false;
    if (auth.error) { message = auth.errorText(lang); isErr = true; }
    else if (st === "expired") { message = at("expired"); isErr = true; }
    else if (st === "signedOut") { message = (auth.notice ? at(auth.notice) + " " : "") + text[lang].signInToSend; }
    $("authMessage").hidden = !message;
    $("authMessage").textContent = message;
    $("authMessage").className = "auth-message" + (isErr ? " err" : "");
    $("auth").classList.toggle("expired", st === "expired");
    const wrong = wrongRole();
    $("roleNotice").hidden = !wrong;
    $("roleNotice").textContent = wrong ? text[lang].studentsOnly.replace("{role}", auth.roleText(lang)) : "";
    $("submit").disabled = sending || wrong || st === "signingIn";
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
  // the textarea's maxlength counts UTF-16 units and stopped emoji at 1000.
  function updateCount() {
    const chars = [...$("comment").value];
    if (chars.length > 2000) $("comment").value = chars.slice(0, 2000).join("");
    $("count").textContent = `${Math.min(chars.length, 2000)} / 2000`;
  }

  $("lang").addEventListener("click", () => { lang = lang === "zh" ? "en" : "zh"; localStorage.setItem("feedback.lang", lang); applyLang(); });
  $("signIn").addEventListener("click", () => { saveDraft(); clearResult(); auth.signIn(); });
  $("signOut").addEventListener("click", () => { clearResult(); auth.signOut(); });
  if (!oidc) $("token").value = auth.secretToken();
  $("comment").addEventListener("input", () => { updateCount(); attemptKey = null; });
  ["course", "token"].forEach((id) => $(id).addEventListener("input", () => { attemptKey = null; }));
  document.querySelectorAll("input[name=rating]").forEach((el) => el.addEventListener("change", () => { attemptKey = null; }));

  $("form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const t = text[lang];
    const course = $("course").value.trim();
    const rating = document.querySelector("input[name=rating]:checked");
    if (!/^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$/.test(course)) return show(false, t.needCourse);
    if (!rating) return show(false, t.needRating);
    if (oidc) {
      await auth.ready;
      if (auth.state !== "signedIn") return show(false, auth.state === "expired" ? t.signedOutKept : t.needSignIn);
    } else {
      const token = $("token").value.trim();
      if (!token) return show(false, t.needToken);
      auth.setSecretToken(token);
    }
    attemptKey = attemptKey || (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2));
    const body = { course_id: course, rating: Number(rating.value) };
    const comment = $("comment").value.trim();
    if (comment) body.comment = comment;
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
        show(true, (data.status === "spooled" ? t.spooled : t.accepted) + data.feedback_id);
        attemptKey = null;
      } else if (response.status === 401 && oidc) {
        show(false, t.signedOutKept);
      } else {
        const error = data.error || {};
        const known = (oidc && t.oidcCodes[error.code]) || t.codes[error.code];
        const detail = error.field ? `${error.field} — ${error.message}` : error.message || response.statusText;
        show(false, known ? (known.endsWith(": ") || known.endsWith("：") ? known + detail : known) : detail);
      }
    } catch (e) {
      show(false, t.network);
    } finally {
      sending = false;
      $("submit").classList.remove("busy");
      renderAuth();
      if (!oidc) $("submit").disabled = false;
    }
  });
  restoreDraft();
  applyLang();
})();
