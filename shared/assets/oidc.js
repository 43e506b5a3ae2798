/*
 * Sign-in for the feedback pages (the student form and the dashboard), shared
 * by both: a classic script, no modules, no dependencies. It defines one global,
 * `FeedbackAuth`.
 *
 * The server tells the page how it authenticates in
 *   <meta name="feedback-auth" content='{"mode":"secret"}'>
 * or {"mode":"oidc","issuer":"https://…","client_id":"feedback-pages"}. A
 * placeholder left unreplaced (not JSON) means shared-secret mode.
 *
 * - Shared-secret mode: the page shows a token field; the pasted token is kept
 *   in this tab's sessionStorage only (never localStorage).
 * - Identity-provider mode: authorization code with PKCE (S256) against the
 *   issuer's discovery document; the tokens live in this tab's sessionStorage
 *   only, so a reload keeps the tab signed in and a new tab signs in again
 *   through the provider's own session. The access token is renewed with the
 *   refresh token before it expires (at 80 % of its lifetime, or 30 s before,
 *   whichever is earlier); when renewal fails, or the API answers 401, the
 *   tokens are dropped and the page shows "signed out — sign in again".
 *
 * The access token only ever goes to this page's own origin (relative paths)
 * and the provider's token endpoint gets the refresh token.
 */
(function () {
  "use strict";

  var ROLE_RANK = { student: 1, instructor: 2, admin: 3 };
  var RENEW_MARGIN_MS = 30000;      // renew at the latest 30 s before expiry
  var RENEW_FRACTION = 0.8;         // ... or at 80 % of the lifetime, if earlier
  var NEAR_EXPIRY_MS = 15000;       // an API call this close to expiry renews first
  var RETRY_MS = 10000;             // a renewal that could not reach the provider

  // Texts for the sign-in states, shared by both pages (each page merges them).
  var TEXT = {
    zh: {
      signIn: "登录", signOut: "退出登录", signingIn: "正在登录…",
      signedInAs: "已登录：{name}", roleLabel: "角色：{role}",
      role_student: "学生", role_instructor: "教师", role_admin: "管理员", role_none: "无角色",
      signedOutHint: "请使用学校统一身份认证登录。",
      justSignedOut: "您已退出登录。",
      expired: "登录已失效（已退出）——请重新登录。",
      err_discovery: "无法连接身份认证服务，请稍后重试。",
      err_insecure: "此页面必须通过 HTTPS 打开才能登录。",
      err_state: "登录回应与本页发起的请求不符，请重新登录。",
      err_provider: "身份认证服务拒绝了登录：{detail}",
      err_token: "无法完成登录：{detail}",
      err_config: "身份认证配置有误：{detail}"
    },
    en: {
      signIn: "Sign in", signOut: "Sign out", signingIn: "Signing in…",
      signedInAs: "Signed in as {name}", roleLabel: "Role: {role}",
      role_student: "student", role_instructor: "instructor", role_admin: "admin", role_none: "no role",
      signedOutHint: "Sign in with your university account.",
      justSignedOut: "You have signed out.",
      expired: "Your sign-in has ended (signed out) — please sign in again.",
      err_discovery: "Could not reach the sign-in service; please try again shortly.",
      err_insecure: "This page must be opened over HTTPS to sign in.",
      err_state: "The sign-in answer does not match a sign-in started here; please sign in again.",
      err_provider: "The sign-in service refused: {detail}",
      err_token: "Could not complete the sign-in: {detail}",
      err_config: "The sign-in configuration is wrong: {detail}"
    }
  };

  function b64url(bytes) {
    var s = "";
    for (var i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }
  function randomString(n) {
    var bytes = new Uint8Array(n);
    crypto.getRandomValues(bytes);
    return b64url(bytes);
  }
  // The payload of a JWT, or null (an opaque or malformed token).
  function jwtPayload(jwt) {
    try {
      var part = String(jwt).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      while (part.length % 4) part += "=";
      var bin = atob(part), bytes = new Uint8Array(bin.length);
      for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      var payload = JSON.parse(new TextDecoder().decode(bytes));
      return payload && typeof payload === "object" ? payload : null;
    } catch (_) {
      return null;
    }
  }
  // The highest of `roles` (array) and `role` (string), as the services read it.
  function highestRole(claims) {
    if (!claims) return null;
    var names = [];
    if (Array.isArray(claims.roles)) names = names.concat(claims.roles);
    if (typeof claims.role === "string") names.push(claims.role);
    var best = null;
    names.forEach(function (r) { if (ROLE_RANK[r] && (!best || ROLE_RANK[r] > ROLE_RANK[best])) best = r; });
    return best;
  }
  function readConfig() {
    var meta = document.querySelector('meta[name="feedback-auth"]');
    var cfg;
    try { cfg = JSON.parse(meta ? meta.content : ""); } catch (_) { cfg = null; }
    if (cfg && cfg.mode === "oidc" && typeof cfg.issuer === "string" && cfg.issuer &&
        typeof cfg.client_id === "string" && cfg.client_id) {
      // `issuer` exactly as the provider writes it (compared with `iss`);
      // `base` without a trailing slash, for the discovery document's address.
      return { mode: "oidc", issuer: cfg.issuer, base: cfg.issuer.replace(/\/+$/, ""), client_id: cfg.client_id };
    }
    return { mode: "secret" };
  }
  function sessionGet(key) {
    try { return JSON.parse(sessionStorage.getItem(key) || "null"); } catch (_) { return null; }
  }
  function sessionSet(key, value) {
    try { sessionStorage.setItem(key, JSON.stringify(value)); } catch (_) { /* storage off: memory only */ }
  }
  function sessionDel(key) {
    try { sessionStorage.removeItem(key); } catch (_) { /* storage off */ }
  }
  function pageUrl() { return location.origin + location.pathname; }

  function start(options) {
    var page = options.page;
    var prefix = "feedback." + page + ".";
    var KEY_TOKENS = prefix + "oidc.tokens", KEY_PENDING = prefix + "oidc.pending";
    var KEY_NOTICE = prefix + "oidc.notice", KEY_SECRET = prefix + "token";
    var cfg = readConfig();

    // Credentials never belong in localStorage: drop what older pages kept there.
    try {
      localStorage.removeItem("feedback.token");
      localStorage.removeItem("feedback.adminToken");
    } catch (_) { /* storage off */ }

    var auth = {
      mode: cfg.mode,
      issuer: cfg.issuer || null,
      // oidc: "starting" (until the stored tokens or the provider's answer are
      // read), "signedOut", "signingIn", "signedIn", "expired"; secret: "secret"
      state: cfg.mode === "oidc" ? "starting" : "secret",
      error: null,          // {kind, detail}: the last sign-in problem, for the page to show
      notice: null,         // "justSignedOut" after coming back from the provider's logout
      user: null,           // {name, role, sub}
      ready: null,          // a promise: the sign-in answer (if any) has been handled
      TEXT: TEXT
    };

    var memoryTokens = null, memorySecret = null;   // when sessionStorage refuses to hold them
    var renewTimer = null, renewing = null, discovery = null;
    var tokens = null;

    function changed() { if (options.onChange) options.onChange(auth); }

    function discover() {
      if (!discovery) {
        discovery = fetch(cfg.base + "/.well-known/openid-configuration", { cache: "no-cache" })
          .then(function (res) {
            if (!res.ok) throw new Error("HTTP " + res.status);
            return res.json();
          })
          .then(function (doc) {
            if (doc.issuer !== cfg.issuer) {
              throw Object.assign(new Error("issuer " + doc.issuer), { kind: "config" });
            }
            if (!doc.authorization_endpoint || !doc.token_endpoint) {
              throw Object.assign(new Error("no authorization or token endpoint"), { kind: "config" });
            }
            return doc;
          });
        discovery.catch(function () { discovery = null; });   // a later click tries again
      }
      return discovery;
    }

    function saveTokens(t) {
      tokens = t;
      memoryTokens = t;
      if (t) sessionSet(KEY_TOKENS, t); else sessionDel(KEY_TOKENS);
    }
    function loadTokens() {
      var t = sessionGet(KEY_TOKENS) || memoryTokens;
      if (!t || t.issuer !== cfg.issuer || t.client_id !== cfg.client_id || !t.access_token) return null;
      return t;
    }
    function describeUser(t) {
      var id = jwtPayload(t.id_token) || {};
      var access = jwtPayload(t.access_token);
      var name = id.preferred_username || id.name || (access && (access.preferred_username || access.name)) ||
        id.sub || (access && access.sub) || "?";
      var sub = (access && access.sub) || id.sub || null;
      return { name: String(name), role: highestRole(access), sub: sub ? String(sub) : null };
    }
    // Token endpoint answer -> what we keep.
    function fromTokenResponse(body, previous) {
      var now = Date.now();
      var lifetime = Math.max(1, Number(body.expires_in) || 300) * 1000;
      return {
        issuer: cfg.issuer,
        client_id: cfg.client_id,
        access_token: body.access_token,
        refresh_token: body.refresh_token || (previous && previous.refresh_token) || null,
        id_token: body.id_token || (previous && previous.id_token) || null,
        obtained_at: now,
        expires_at: now + lifetime,
        renew_at: now + Math.max(1000, Math.min(lifetime * RENEW_FRACTION, lifetime - RENEW_MARGIN_MS))
      };
    }
    function signedIn(t) {
      saveTokens(t);
      auth.state = "signedIn";
      auth.error = null;
      auth.user = describeUser(t);
      schedule();
      changed();
    }
    // Drop the tokens: `expired` says the sign-in ended by itself (renewal
    // failed, or the API refused the token), which the page shows as such.
    function dropTokens(expired) {
      clearTimeout(renewTimer);
      saveTokens(null);
      auth.user = null;
      auth.state = expired ? "expired" : "signedOut";
      changed();
    }
    function schedule() {
      clearTimeout(renewTimer);
      if (!tokens) return;
      var delay = Math.max(0, tokens.renew_at - Date.now());
      renewTimer = setTimeout(function () { renew(); }, Math.min(delay, 0x7fffffff));
    }

    async function tokenRequest(params) {
      var doc = await discover();
      var res = await fetch(doc.token_endpoint, {
        method: "POST",
        headers: { "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams(params).toString(),
        cache: "no-store"
      });
      var body = await res.json().catch(function () { return {}; });
      if (!res.ok || !body.access_token) {
        var err = new Error(body.error_description || body.error || ("HTTP " + res.status));
        err.status = res.status;
        throw err;
      }
      return body;
    }

    // Renew with the refresh token; resolves true when signed in afterwards.
    function renew() {
      if (renewing) return renewing;
      renewing = (async function () {
        var current = tokens;
        if (!current) return false;
        if (!current.refresh_token) {
          if (Date.now() < current.expires_at) { schedule(); return true; }
          dropTokens(true);
          return false;
        }
        try {
          var body = await tokenRequest({
            grant_type: "refresh_token",
            refresh_token: current.refresh_token,
            client_id: cfg.client_id
          });
          if (tokens !== current) return Boolean(tokens);   // signed out meanwhile
          signedIn(fromTokenResponse(body, current));
          return true;
        } catch (err) {
          if (tokens !== current) return Boolean(tokens);
          // The provider said no (session ended, refresh token revoked): signed out.
          // It could not be reached: try again shortly while the access token lasts.
          if (!err.status && Date.now() + RETRY_MS < current.expires_at) {
            clearTimeout(renewTimer);
            renewTimer = setTimeout(function () { renew(); }, RETRY_MS);
            return true;
          }
          dropTokens(true);
          return false;
        }
      })();
      renewing.then(function () { renewing = null; }, function () { renewing = null; });
      return renewing;
    }

    // The answer from the provider: ?code=…&state=… (or ?error=…).
    async function handleCallback() {
      var params = new URLSearchParams(location.search);
      if (!params.has("state") || !(params.has("code") || params.has("error"))) return false;
      var pending = sessionGet(KEY_PENDING);
      sessionDel(KEY_PENDING);
      history.replaceState(history.state, "", location.pathname + ((pending && pending.hash) || location.hash));
      if (!pending || pending.state !== params.get("state") ||
          (params.has("iss") && params.get("iss") !== cfg.issuer)) {
        auth.error = { kind: "state" };
        return true;
      }
      if (params.has("error")) {
        auth.error = { kind: "provider", detail: params.get("error_description") || params.get("error") };
        return true;
      }
      auth.state = "signingIn";
      changed();
      try {
        var body = await tokenRequest({
          grant_type: "authorization_code",
          code: params.get("code"),
          redirect_uri: pending.redirect_uri,
          client_id: cfg.client_id,
          code_verifier: pending.verifier
        });
        // The ID token came straight from the token endpoint over TLS, so its
        // claims are checked, not its signature (OpenID Connect Core 3.1.3.7).
        var id = jwtPayload(body.id_token);
        var aud = id && (Array.isArray(id.aud) ? id.aud : [id.aud]);
        if (!id || id.iss !== cfg.issuer || aud.indexOf(cfg.client_id) < 0 || id.nonce !== pending.nonce) {
          throw new Error("the ID token is not for this page");
        }
        signedIn(fromTokenResponse(body, null));
      } catch (err) {
        auth.state = "signedOut";
        auth.error = { kind: err.kind || (err.status ? "token" : "discovery"), detail: err.message };
      }
      return true;
    }

    async function init() {
      if (cfg.mode !== "oidc") { changed(); return; }
      if (sessionGet(KEY_NOTICE) === "justSignedOut") { auth.notice = "justSignedOut"; sessionDel(KEY_NOTICE); }
      await handleCallback();
      if (auth.state !== "signedIn") {
        var t = loadTokens();
        auth.state = "signedOut";
        if (t) {
          tokens = t;
          memoryTokens = t;
          auth.state = "signedIn";
          auth.user = describeUser(t);
          // A stale answer (the Back button into the provider) while signed in: nothing to say.
          if (auth.error && auth.error.kind === "state") auth.error = null;
          if (Date.now() >= t.renew_at) {
            changed();
            await renew();
          } else {
            schedule();
          }
        }
      }
      changed();
    }

    // A tab in the background has its timers slowed down: check on return.
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible" && tokens && Date.now() >= tokens.renew_at) renew();
    });

    auth.signIn = async function () {
      if (cfg.mode !== "oidc") return;
      auth.error = null;
      auth.notice = null;
      if (!window.crypto || !crypto.subtle || !window.isSecureContext) {
        auth.error = { kind: "insecure" };
        changed();
        return;
      }
      auth.state = "signingIn";
      changed();
      try {
        var doc = await discover();
        var verifier = randomString(32);
        var digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
        var pending = {
          state: randomString(16),
          nonce: randomString(16),
          verifier: verifier,
          redirect_uri: pageUrl(),
          hash: location.hash
        };
        sessionSet(KEY_PENDING, pending);
        if (!sessionGet(KEY_PENDING)) throw Object.assign(new Error("sessionStorage is off"), { kind: "config" });
        var q = new URLSearchParams({
          response_type: "code",
          client_id: cfg.client_id,
          redirect_uri: pending.redirect_uri,
          scope: "openid",
          code_challenge: b64url(new Uint8Array(digest)),
          code_challenge_method: "S256",
          state: pending.state,
          nonce: pending.nonce
        });
        var sep = doc.authorization_endpoint.indexOf("?") < 0 ? "?" : "&";
        location.assign(doc.authorization_endpoint + sep + q.toString());
      } catch (err) {
        auth.state = tokens ? "signedIn" : "signedOut";
        auth.error = { kind: err.kind || "discovery", detail: err.message };
        changed();
      }
    };

    auth.signOut = async function () {
      if (cfg.mode !== "oidc") return;
      var idToken = tokens && tokens.id_token;
      clearTimeout(renewTimer);
      saveTokens(null);
      sessionDel(KEY_PENDING);
      auth.user = null;
      auth.error = null;
      auth.state = "signedOut";
      sessionSet(KEY_NOTICE, "justSignedOut");
      var doc = null;
      try { doc = await discover(); } catch (_) { /* signed out here at least */ }
      if (doc && doc.end_session_endpoint) {
        var q = new URLSearchParams({ client_id: cfg.client_id, post_logout_redirect_uri: pageUrl() });
        if (idToken) q.set("id_token_hint", idToken);
        var sep = doc.end_session_endpoint.indexOf("?") < 0 ? "?" : "&";
        location.assign(doc.end_session_endpoint + sep + q.toString());
        return;
      }
      sessionDel(KEY_NOTICE);
      auth.notice = "justSignedOut";
      changed();
    };

    // Shared-secret mode: the pasted token, for this tab only.
    auth.secretToken = function () {
      var v = sessionGet(KEY_SECRET);
      return typeof v === "string" ? v : (memorySecret || "");
    };
    auth.setSecretToken = function (value) {
      value = String(value || "").trim();
      memorySecret = value || null;
      if (value) sessionSet(KEY_SECRET, value); else sessionDel(KEY_SECRET);
    };

    // The bearer token for the next API call ("" when there is none), renewed
    // first when it is about to expire.
    auth.bearer = async function () {
      if (cfg.mode !== "oidc") return auth.secretToken();
      if (auth.ready) await auth.ready;
      if (!tokens) return "";
      if (Date.now() + NEAR_EXPIRY_MS >= tokens.expires_at) {
        var ok = await renew();
        if (!ok || !tokens) return "";
      }
      return tokens.access_token;
    };

    // fetch() for this page's own API, with the bearer token. A 401 in
    // identity-provider mode ends the sign-in (the page shows it).
    auth.fetch = async function (path, init) {
      if (!/^\/(?!\/)/.test(path)) throw new Error("only this origin's paths carry the token");
      init = Object.assign({}, init || {});
      var headers = new Headers(init.headers || {});
      var token = await auth.bearer();
      if (token) headers.set("Authorization", "Bearer " + token);
      init.headers = headers;
      var res = await fetch(path, init);
      if (res.status === 401 && cfg.mode === "oidc" && tokens && tokens.access_token === token) dropTokens(true);
      return res;
    };

    // Who the API will take the next call from, in either mode: the role
    // (the highest, as the services read it) and the subject, or null.
    // Read from the token without checking it: only for what the page shows.
    auth.role = function () {
      if (cfg.mode === "oidc") return auth.state === "signedIn" && auth.user ? auth.user.role : null;
      return highestRole(jwtPayload(auth.secretToken()));
    };
    auth.subject = function () {
      if (cfg.mode === "oidc") return auth.state === "signedIn" && auth.user ? auth.user.sub : null;
      var claims = jwtPayload(auth.secretToken());
      return claims && typeof claims.sub === "string" && claims.sub ? claims.sub : null;
    };

    // The sign-in bar both pages share: #auth (shown in identity-provider
    // mode only) with #who, #role, #signIn and #signOut. Returns what the
    // page should say about the sign-in, {text, kind: "err" | ""}, where
    // `signedOutHint` is the page's own invitation to sign in.
    auth.render = function (lang, signedOutHint) {
      var el = function (id) { return document.getElementById(id); };
      el("auth").hidden = cfg.mode !== "oidc";
      if (cfg.mode !== "oidc") return { text: "", kind: "" };
      var st = auth.state, at = function (key, vars) { return auth.text(lang, key, vars); };
      var user = st === "signedIn" && auth.user ? auth.user : null;
      el("who").textContent = user ? at("signedInAs", { name: user.name }) : st === "signingIn" ? at("signingIn") : "";
      el("who").hidden = !el("who").textContent;
      el("role").hidden = !user;
      el("role").textContent = user ? auth.roleText(lang) : "";
      el("signIn").hidden = st === "signedIn" || st === "signingIn" || st === "starting";
      el("signOut").hidden = st !== "signedIn";
      el("signIn").textContent = at("signIn");
      el("signOut").textContent = at("signOut");
      if (auth.error) return { text: auth.errorText(lang), kind: "err" };
      if (st === "expired") return { text: at("expired"), kind: "err" };
      if (st === "signedOut") return { text: (auth.notice ? at(auth.notice) + " " : "") + signedOutHint, kind: "" };
      return { text: "", kind: "" };
    };

    // "Signed in as …", "Role: …" etc. in the page's language.
    auth.text = function (lang, key, vars) {
      var s = (TEXT[lang] && TEXT[lang][key]) || TEXT.en[key] || key;
      Object.keys(vars || {}).forEach(function (k) { s = s.replace("{" + k + "}", vars[k]); });
      return s;
    };
    auth.errorText = function (lang) {
      if (!auth.error) return "";
      return auth.text(lang, "err_" + auth.error.kind, { detail: auth.error.detail || "" });
    };
    auth.roleText = function (lang) {
      return auth.text(lang, "role_" + ((auth.user && auth.user.role) || "none"));
    };

    // After start() returns, so the page's onChange can use what start() returned.
    auth.ready = Promise.resolve().then(init);
    return auth;
  }

  window.FeedbackAuth = {
    start: start,
    highestRole: highestRole,
    ROLE_RANK: ROLE_RANK,
    TEXT: TEXT
  };
})();
