// keybroker dashboard: the only script. Forms and buttons call the JSON API (/api/v1) with the
// session's CSRF token; pages are rendered by the server. No inline script anywhere.
"use strict";

// Record CSP violations and script errors in the DOM, so tests (and curious users) can see them.
(function watch() {
  const note = (kind, text) => {
    const el = document.documentElement;
    const prev = el.getAttribute("data-" + kind) || "";
    el.setAttribute("data-" + kind, prev + text + "\n");
  };
  document.addEventListener("securitypolicyviolation", (e) =>
    note("csp-violations", e.violatedDirective + " " + e.blockedURI));
  window.addEventListener("error", (e) => note("js-errors", String(e.message)));
  window.addEventListener("unhandledrejection", (e) => note("js-errors", String(e.reason)));
})();

// A reset or sign-up confirmation link's token leaves the URL before anything else can see it.
const linkToken = (function takeLinkToken() {
  if (location.pathname !== "/reset/confirm" && location.pathname !== "/signup/confirm") return "";
  const token = new URLSearchParams(location.search).get("token") || "";
  history.replaceState(null, "", location.pathname);
  return token;
})();
const resetToken = location.pathname === "/reset/confirm" ? linkToken : "";

const REVEAL_SECONDS = 30;

function csrf() {
  const m = document.querySelector('meta[name="csrf-token"]');
  return m ? m.content : "";
}

async function api(method, url, body) {
  const headers = { "X-CSRF-Token": csrf() };
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(url, init);
  let data = null;
  if (res.status !== 204) {
    try { data = await res.json(); } catch (_) { data = null; }
  }
  if (!res.ok) {
    const msg = data && data.error && data.error.message ? data.error.message : "request failed (" + res.status + ")";
    const err = new Error(msg);
    err.type = data && data.error ? data.error.type : "";
    throw err;
  }
  return data;
}

// A time as the server renders it (dashboard::shown): RFC 3339 with a space for the "T".
function shown(rfc3339) {
  return rfc3339 ? rfc3339.replace("T", " ") : "never";
}

// The confirmation dialog (base.html): destructive actions run only after it is confirmed, and
// with data-reauth only after the password re-opens the re-auth window (POST /api/v1/auth/reauth).
let pendingConfirm = null;

function confirmAction({ message, ok, reauth, run }) {
  const dialog = document.getElementById("confirm");
  const form = document.getElementById("confirm-form");
  const password = document.getElementById("confirm-password");
  document.getElementById("confirm-message").textContent = message;
  document.getElementById("confirm-ok").textContent = ok || "Confirm";
  document.getElementById("confirm-reauth").hidden = !reauth;
  password.required = Boolean(reauth);
  password.value = "";
  showError(form, null);
  pendingConfirm = { run, reauth: Boolean(reauth) };
  dialog.showModal();
  // The safe choice has the focus unless a password is asked for.
  (reauth ? password : document.getElementById("confirm-cancel")).focus();
}

function closeConfirm() {
  pendingConfirm = null;
  const dialog = document.getElementById("confirm");
  if (dialog.open) dialog.close();
}

async function runConfirmed(form) {
  const p = pendingConfirm;
  if (!p) return;
  if (p.reauth) await reauth(document.getElementById("confirm-password").value);
  await p.run();
  closeConfirm();
}

function showError(form, err) {
  const p = form.querySelector(".error");
  if (p) { p.textContent = err ? err.message : ""; p.hidden = !err; }
}

function fields(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name) continue;
    if (el.name === "label" && el.value.trim() === "") continue;
    out[el.name] = el.value;
  }
  return out;
}

// <form data-api="/api/v1/..." [data-method] [data-next|data-reload|data-done]>: fields as JSON.
// With data-reauth-message, an answer of reauth_required asks for the password and sends again.
async function submitApiForm(form) {
  const body = fields(form);
  let url = form.dataset.api;
  if (url.includes("{provider}")) {
    url = url.replace("{provider}", encodeURIComponent(body.provider));
    delete body.provider;
  }
  if (form.id === "reset-confirm") body.token = resetToken;
  const method = form.dataset.method || "POST";
  const send = async () => { await api(method, url, body); afterApiForm(form); };
  try {
    await send();
  } catch (err) {
    if (err.type !== "reauth_required" || !form.dataset.reauthMessage) throw err;
    confirmAction({ message: form.dataset.reauthMessage, ok: "Confirm", reauth: true, run: send });
  }
}

function afterApiForm(form) {
  if (form.dataset.next) location.assign(form.dataset.next);
  else if (form.hasAttribute("data-reload") || form.dataset.method === "PUT") location.reload();
  else if (form.dataset.done) {
    const ok = form.querySelector(".ok");
    if (ok) { ok.textContent = form.dataset.done; ok.hidden = false; }
    form.reset();
  }
}

// The quick format check before submit; the server's check is the real one.
function keyHint(form) {
  // The add form picks the provider; a rotation form names its key's provider.
  const select = form.querySelector('select[name="provider"]');
  const input = form.querySelector('input[name="key"]');
  const hint = form.querySelector(".hint");
  if (!input) return true;
  const opt = select ? select.selectedOptions[0] : null;
  const source = opt ? opt.dataset : form.dataset;
  const name = opt ? opt.textContent : form.dataset.providerName;
  const prefixes = (source.prefixes || "").split(" ").filter(Boolean);
  const value = input.value.trim();
  let problem = "";
  if (/\s/.test(value)) problem = "A key has no spaces or line breaks.";
  else if (value.length > 0 && value.length < 16) problem = "That is too short to be a key.";
  else if (value.length > 0 && prefixes.length && !prefixes.some((p) => value.startsWith(p)))
    problem = name + " keys start with " + prefixes.join(" or ") + ".";
  if (hint) hint.textContent = problem;
  input.setCustomValidity(problem);
  return problem === "";
}

async function reauth(password) {
  await api("POST", "/api/v1/auth/reauth", { password });
}

async function reveal(form) {
  const item = form.closest("[data-key-id]");
  const id = item.dataset.keyId;
  await reauth(form.elements.password.value);
  const data = await api("POST", "/api/v1/keys/" + encodeURIComponent(id) + "/reveal");
  form.reset();
  form.hidden = true;
  const code = item.querySelector(".secret");
  const copy = item.querySelector(".copy");
  code.textContent = data.key;
  code.classList.add("revealed");
  const status = item.querySelector(".countdown");
  const toggle = item.querySelector("[data-toggle^='reveal-']");
  if (toggle) toggle.setAttribute("aria-expanded", "false");
  copy.hidden = false;
  copy.onclick = () => copyText(code.textContent, copy);
  status.textContent = "hidden again in " + REVEAL_SECONDS + " s";
  setTimeout(() => {
    code.textContent = code.dataset.masked;
    code.classList.remove("revealed");
    copy.hidden = true;
    status.textContent = "";
  }, REVEAL_SECONDS * 1000);
}

async function removeKey(form) {
  const id = form.closest("[data-key-id]").dataset.keyId;
  await reauth(form.elements.password.value);
  await api("DELETE", "/api/v1/keys/" + encodeURIComponent(id));
  location.reload();
}

function snippet(provider, base, token) {
  if (!provider) {
    return "# Every provider: put its id in the path (openai, anthropic, ...)\n" + snippet("{provider}", base, token);
  }
  const url = base + "/proxy/" + provider;
  if (provider === "openai")
    return 'from openai import OpenAI\n\nclient = OpenAI(\n    base_url="' + url + '/v1",\n    api_key="' + token + '",\n)';
  if (provider === "anthropic")
    return 'import anthropic\n\nclient = anthropic.Anthropic(\n    base_url="' + url + '",\n    api_key="' + token + '",\n)';
  return 'curl ' + url + '/... \\\n  -H "Authorization: Bearer ' + token + '"';
}

// The name a token form's checkbox gives provider `id`.
function providerName(form, id) {
  const box = Array.from(form.querySelectorAll('input[name="providers"]')).find((b) => b.value === id);
  return box ? box.parentElement.textContent.trim() : id;
}

async function createToken(form) {
  const providers = Array.from(form.querySelectorAll('input[name="providers"]:checked')).map((b) => b.value);
  const body = { name: form.elements.name.value, providers };
  const days = Number(form.elements.expires.value);
  if (days > 0) body.expires_at = new Date(Date.now() + days * 86400000).toISOString().replace(/\.\d+Z$/, "Z");
  const limit = form.elements.spend_limit_usd.value.trim();
  if (limit) body.spend_limit_usd = limit;
  const data = await api("POST", "/api/v1/tokens", body);
  const base = form.dataset.baseUrl;
  const snippets = providers.length
    ? providers.map((p) => "# " + providerName(form, p) + "\n" + snippet(p, base, data.token))
    : [snippet("", base, data.token)];
  document.getElementById("new-token-value").textContent = data.token;
  document.getElementById("new-token-snippet").textContent = snippets.join("\n\n");
  document.getElementById("new-token").hidden = false;
  addTokenRow(form, data);
  form.reset();
}

// The new token joins the list at once, built from the page's <template> (text only, no markup).
function addTokenRow(form, t) {
  const row = document.getElementById("token-row").content.firstElementChild.cloneNode(true);
  const cells = row.querySelectorAll("td");
  cells[0].textContent = t.name;
  // In the form's (the registry's) order, as the server lists them.
  const chosen = Array.from(form.querySelectorAll('input[name="providers"]')).filter((b) => t.providers.includes(b.value));
  cells[1].textContent = chosen.length ? chosen.map((b) => b.parentElement.textContent.trim()).join(", ") : "all providers";
  const scope = [];
  if (t.methods) scope.push(t.methods.join(" "));
  if (t.paths) scope.push(t.paths.join(" "));
  cells[2].textContent = scope.length ? scope.join("; ") : "any method and path";
  cells[3].textContent = t.spend_limit_usd
    ? "$" + t.spent_usd + " of $" + t.spend_limit_usd + " ($" + t.remaining_usd + " left)"
    : "no limit";
  cells[4].textContent = shown(t.created_at);
  cells[5].textContent = shown(t.expires_at);
  row.dataset.tokenId = t.id;
  const revoke = row.querySelector("button");
  revoke.dataset.call = "DELETE /api/v1/tokens/" + encodeURIComponent(t.id);
  revoke.dataset.confirm = "Revoke the token \u201c" + t.name + "\u201d? Tools using it stop working at once.";
  document.getElementById("token-list").appendChild(row);
  document.getElementById("token-table").hidden = false;
  document.getElementById("no-tokens").hidden = true;
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch (_) {
    button.textContent = "Select and copy";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  // A sign-up confirmation link fills in its code; without a link the code is typed in.
  const signupToken = document.getElementById("signup-token");
  if (signupToken && location.pathname === "/signup/confirm" && linkToken) signupToken.value = linkToken;
  const confirmForm = document.getElementById("confirm-form");
  if (confirmForm) {
    confirmForm.addEventListener("submit", (e) => {
      e.preventDefault();
      const ok = document.getElementById("confirm-ok");
      ok.disabled = true;
      showError(confirmForm, null);
      runConfirmed(confirmForm)
        .catch((err) => showError(confirmForm, err))
        .finally(() => { ok.disabled = false; });
    });
    document.getElementById("confirm-cancel").addEventListener("click", closeConfirm);
    // Escape closes the dialog too; nothing pending may run after that.
    document.getElementById("confirm").addEventListener("close", () => { pendingConfirm = null; });
  }

  document.addEventListener("submit", (e) => {
    const form = e.target;
    if (form === confirmForm) return;
    let action = null;
    if (form.classList.contains("reveal")) action = reveal;
    else if (form.classList.contains("remove")) action = removeKey;
    else if (form.id === "create-token") action = createToken;
    else if (form.dataset.api) action = submitApiForm;
    if (!action) return;
    e.preventDefault();
    if (form.querySelector('input[name="key"]') && !keyHint(form)) { form.reportValidity(); return; }
    showError(form, null);
    action(form).catch((err) => showError(form, err));
  });

  document.addEventListener("input", (e) => {
    const form = e.target.form;
    if (form && form.querySelector('input[name="key"]')) keyHint(form);
  });
  document.addEventListener("change", (e) => {
    const form = e.target.form;
    if (form && form.querySelector('input[name="key"]')) keyHint(form);
  });

  document.addEventListener("click", (e) => {
    const t = e.target.closest("button");
    if (!t) return;
    if (t.dataset.toggle) {
      const target = document.getElementById(t.dataset.toggle);
      target.hidden = !target.hidden;
      t.setAttribute("aria-expanded", String(!target.hidden));
      if (!target.hidden) { const first = target.querySelector("input"); if (first) first.focus(); }
    } else if (t.dataset.call) {
      const [method, url] = t.dataset.call.split(" ");
      const run = () => api(method, url).then(() => {
        if (t.dataset.next) location.assign(t.dataset.next); else location.reload();
      });
      if (t.dataset.confirm) {
        confirmAction({ message: t.dataset.confirm, ok: t.dataset.ok, reauth: t.hasAttribute("data-reauth"), run });
      } else {
        run().catch((err) => alertNear(t, err));
      }
    } else if (t.dataset.copy) {
      copyText(document.getElementById(t.dataset.copy).textContent, t);
    } else if (t.hasAttribute("data-logout")) {
      api("POST", "/api/v1/auth/logout").finally(() => location.assign("/login"));
    }
  });
});

function alertNear(el, err) {
  let p = el.parentElement.querySelector(".error");
  if (!p) {
    p = document.createElement("p");
    p.className = "error";
    p.setAttribute("role", "alert");
    el.parentElement.appendChild(p);
  }
  p.textContent = err.message;
}
