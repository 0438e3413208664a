// The perdure dashboard: a small single-page app over the /api/v1 HTTP API of `perdure serve`.
//
// Plain ES module, no build step and no library, so it works offline and is served as is.
// Three pages behind a hash router: the runs list (#/runs), a run's step timeline
// (#/runs/<id>) and the approvals inbox (#/approvals). Every page refreshes itself by polling.
// Data is only ever put in the page as text (textContent / text nodes), never as HTML.
// The DOM and formatting helpers are in dom.js; a run's journal, with its "Fork from here"
// action, in journal.js.

import { $, between, errorBox, formatDuration, h, plural, pretty, runHref, since, statusBadge,
  syncChildren, tickDurations, timeEl, workflowPath } from "./dom.js";
import { timeline } from "./journal.js";

const TOKEN_KEY = "perdure.token";
const POLL_MS = 2000;
const RUN_LIMIT = 100;
const ACTIVE = new Set(["ENQUEUED", "PENDING", "RUNNING", "WAITING"]); // can be cancelled
const RESUMABLE = new Set(["ERROR", "CANCELLED", "DEAD_LETTER"]); // can be resumed or retried
const STATUSES = [...ACTIVE, "SUCCESS", ...RESUMABLE];

const state = {
  user: null, // {name, role} from /whoami
  view: null, // the page shown: {title, nav, el, refresh()}
  pending: [], // approvals waiting for a decision (the nav badge, the run page's notice)
  decided: new Set(), // approvals decided here: hidden from a refresh that read them before
  filters: { status: "", name: "" }, // the runs list's, kept across pages
};

const isOperator = () => state.user?.role === "operator";

/** A run's duration: from creation to its last update once finished; still counting (an
 * element the refresh updates, see tickDurations) while it is not. */
function runDuration({ status, created_at: created, updated_at: updated }) {
  if (!ACTIVE.has(status)) return h("span", {}, formatDuration(between(created, updated)));
  return h("span", { "data-since": created }, formatDuration(since(created)));
}

// -- API -----------------------------------------------------------------------------------

/** An API failure: the HTTP status (0: no answer), the error's code and its message. */
const apiError = (status, code, message) => Object.assign(new Error(message), { status, code });

const storedToken = () => sessionStorage.getItem(TOKEN_KEY);

/** Call the API with the session's token (or `token`, when signing in). Resolves to the
 * JSON answer; rejects with an apiError carrying the server's message. A 401 with the
 * session's token signs out: the token was revoked or the server's tokens changed. */
async function api(path, { method = "GET", body, token = storedToken() } = {}) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body && JSON.stringify(body) });
  } catch (err) {
    throw apiError(0, "unreachable", `Cannot reach the server (${err.message}).`);
  }
  const data = await response.json().catch(() => null);
  if (response.ok) return data;
  const error = data?.error ?? {}; // every API error is {"error": {"code", "message"}}
  const failure = apiError(response.status, error.code ?? `http_${response.status}`,
    error.message ?? `${response.status} ${response.statusText}`);
  if (response.status === 401 && token === storedToken() && token !== null) {
    signOut(`Signed out: ${failure.message}`);
  }
  throw failure;
}

// -- session and messages ------------------------------------------------------------------

function setUser(user) {
  state.user = user;
  $("#nav").hidden = !user;
  $("#session").hidden = !user;
  $('[data-testid="whoami"]').textContent = user ? `${user.name} (${user.role})` : "";
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  setUser(null);
  state.pending = [];
  show(loginView(message));
}

let flashTimer = 0;
/** A message for the whole page (text, or nodes made with h); `kind` "poll" marks a
 * live-refresh failure, cleared by the next refresh that works. Other messages go away
 * after a few seconds. */
function flash(message, kind = "info") {
  const el = $("#flash");
  clearTimeout(flashTimer);
  el.replaceChildren(...[message].flat());
  el.dataset.kind = kind;
  el.hidden = !message;
  if (message && kind !== "poll") flashTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

// -- routing and live refresh --------------------------------------------------------------

function route() {
  if (!storedToken()) return show(loginView());
  const [section, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  if (section === "runs" && rest.length) return show(runView(decodeURIComponent(rest.join("/"))));
  if (section === "approvals") return show(approvalsView());
  return show(runsView());
}

function show(view) {
  state.view = view;
  $("#view").replaceChildren(view.el);
  document.title = `${view.title} · perdure`;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === view.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  refreshNow();
}

let [pollTimer, polling, pollAgain] = [0, false, false];

/** Refresh the page now (after an action, on navigation), then every POLL_MS. One refresh
 * runs at a time; a request made meanwhile runs right after it. */
async function refreshNow() {
  if (polling) { pollAgain = true; return; }
  polling = true;
  clearTimeout(pollTimer);
  const view = state.view;
  try {
    if (view && storedToken() && !document.hidden) {
      if (!state.user) setUser(await api("/api/v1/whoami")); // the server was down at start
      await refreshBadge();
      await view.refresh();
      if ($("#flash").dataset.kind === "poll") flash(""); // it works again
    }
  } catch (err) {
    if (storedToken()) flash(`Live refresh failed: ${err.message}`, "poll");
  } finally {
    polling = false;
    pollTimer = setTimeout(refreshNow, pollAgain ? 0 : POLL_MS);
    pollAgain = false;
  }
}

const approvalKey = (a) => JSON.stringify([a.workflow_id, a.name]);

async function refreshBadge() {
  const { approvals } = await api("/api/v1/approvals");
  const listed = new Set(approvals.map(approvalKey));
  for (const key of state.decided) if (!listed.has(key)) state.decided.delete(key);
  state.pending = approvals.filter((a) => !state.decided.has(approvalKey(a)));
  const badge = $('[data-testid="approvals-badge"]');
  badge.textContent = String(state.pending.length);
  badge.hidden = state.pending.length === 0;
  badge.setAttribute("aria-label", `${state.pending.length} waiting`);
}

// -- sign in -------------------------------------------------------------------------------

function loginView(message = "") {
  const input = h("input", { id: "token", name: "token", type: "password", required: true,
    autocomplete: "off", spellcheck: "false", "data-testid": "token-input" });
  const error = h("p", { class: "error", role: "alert", "data-testid": "login-error" }, message);
  const button = h("button", { type: "submit", class: "primary", "data-testid": "sign-in" },
    "Sign in");

  async function submit(event) {
    event.preventDefault();
    const token = input.value.trim();
    button.disabled = true;
    error.textContent = "";
    try {
      const user = await api("/api/v1/whoami", { token });
      sessionStorage.setItem(TOKEN_KEY, token);
      setUser(user);
      route();
    } catch (err) {
      error.textContent = err.status === 401 ? "This token is not valid." : err.message;
      button.disabled = false;
      input.select();
    }
  }

  const form = h("form", { class: "card login", "data-testid": "login-form", onsubmit: submit },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Enter an API token of this server. It is kept in this browser ",
      "tab only, and sent with each request."),
    h("label", { for: "token" }, "API token"), input, button, error);
  queueMicrotask(() => input.focus());
  return { title: "Sign in", nav: null, el: form, refresh: async () => {} };
}

// -- runs list -----------------------------------------------------------------------------

function runsView() {
  const { filters } = state;
  const status = h("select", { id: "filter-status", "data-testid": "filter-status" },
    h("option", { value: "" }, "any"), STATUSES.map((s) => h("option", { value: s }, s)));
  const name = h("input", { id: "filter-name", type: "search", placeholder: "exact name",
    "data-testid": "filter-name" });
  status.value = filters.status;
  name.value = filters.name;
  // The name filter applies on Enter or on leaving the field, not at each key.
  status.addEventListener("change", () => { filters.status = status.value; refreshNow(); });
  name.addEventListener("change", () => { filters.name = name.value.trim(); refreshNow(); });

  const rows = h("tbody", { "data-testid": "runs-body" });
  const empty = h("p", { class: "muted", "data-testid": "runs-empty", hidden: true },
    "No run matches.");
  const summary = h("p", { class: "muted", "aria-live": "polite" });
  const el = h("section", { "data-testid": "runs-page" },
    h("div", { class: "page-head" }, h("h1", {}, "Runs"),
      h("form", { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() },
        h("label", { for: "filter-status" }, "Status"), status,
        h("label", { for: "filter-name" }, "Workflow"), name)),
    h("table", { class: "runs", "data-testid": "runs-table" },
      h("thead", {}, h("tr", {}, ["Id", "Workflow", "Status", "Created", "Updated", "Duration"]
        .map((title) => h("th", { scope: "col" }, title)))),
      rows),
    empty, summary);

  async function refresh() {
    const query = new URLSearchParams({ limit: String(RUN_LIMIT) });
    if (filters.status) query.set("status", filters.status);
    if (filters.name) query.set("name", filters.name);
    const { workflows } = await api(`/api/v1/workflows?${query}`);
    syncChildren(rows, workflows, (run) => run.id, runRow);
    tickDurations(rows);
    empty.hidden = workflows.length > 0;
    summary.textContent = workflows.length < RUN_LIMIT ? `${plural(workflows.length, "run")}.`
      : `The newest ${RUN_LIMIT} runs; filter to see others.`;
  }
  return { title: "Runs", nav: "runs", el, refresh };
}

function runRow(run) {
  const href = runHref(run.id);
  // The id is a real link (keyboard, middle click); the rest of the row is a click target too.
  return h("tr", { class: "clickable", "data-testid": "run-row", "data-id": run.id,
    onclick: (event) => { if (!event.target.closest("a")) location.hash = href; } },
    [h("a", { href, class: "mono" }, run.id), run.name, statusBadge(run.status, "run-row-status"),
      timeEl(run.created_at), timeEl(run.updated_at)].map((cell) => h("td", {}, cell)),
    h("td", { class: "num" }, runDuration(run)));
}

// -- a run and its steps -------------------------------------------------------------------

function runView(id) {
  const el = h("section", { class: "run", "data-testid": "run-page" },
    h("p", { class: "muted" }, "Loading…"));
  const draft = { position: null, text: "" }; // the open fork form (journal.js)
  let last = "";

  async function refresh() {
    const run = await api(workflowPath(id)).catch((err) => {
      if (err.status !== 404) throw err;
      el.replaceChildren(h("h1", {}, "Run not found"), h("p", { role: "alert" }, err.message),
        h("p", {}, h("a", { href: "#/runs" }, "Back to the runs")));
    });
    if (!run) return;
    // (The pending list is read just before the run: trust it only while the run waits.)
    const waiting = state.pending.filter((a) => a.workflow_id === id && run.status === "WAITING");
    const signature = JSON.stringify([run, waiting, state.user]);
    if (signature !== last) {
      last = signature;
      // Re-render, keeping open what the reader opened, and the focus in the fork form.
      const open = [...el.querySelectorAll("details[open]")].map((d) => d.dataset.key);
      const typing = document.activeElement?.closest('[data-testid="fork-form"]') &&
        el.contains(document.activeElement);
      el.replaceChildren(...renderRun(run, waiting, draft).flat().filter((node) => node != null));
      for (const d of el.querySelectorAll("details")) d.open ||= open.includes(d.dataset.key);
      if (typing) $('[data-testid="fork-output"]', el)?.focus();
    }
    tickDurations(el);
  }
  return { title: `Run ${id}`, nav: "runs", el, refresh };
}

function renderRun(run, waiting, draft) {
  const meta = [["Workflow", run.name], ["Created", timeEl(run.created_at)],
    ["Updated", timeEl(run.updated_at)], ["Duration", runDuration(run)],
    ["Recoveries", String(run.recoveries)], run.queue && ["Queue", run.queue],
    run.owner && ["Worker", run.owner],
    run.version && ["Version", h("span", { class: "mono", "data-testid": "run-version" },
      run.version)],
    run.forked_from != null && ["Forked from", h("span", { "data-testid": "run-forked-from" },
      h("a", { href: runHref(run.forked_from), class: "mono" }, run.forked_from),
      ` at entry #${run.forked_at}`)]].filter(Boolean);
  return [
    h("p", { class: "crumbs" }, h("a", { href: "#/runs" }, "Runs"), " / "),
    h("div", { class: "page-head" },
      h("h1", {}, "Run ", h("span", { class: "mono", "data-testid": "run-id" }, run.id)),
      statusBadge(run.status, "run-status")),
    h("dl", { class: "meta" }, meta.map(([term, value]) => [h("dt", {}, term),
      h("dd", {}, value)])),
    runActions(run),
    waiting.map((a) => h("p", { class: "notice", "data-testid": "run-waiting" },
      "Waiting for approval ", h("strong", {}, a.name), ": ",
      h("a", { href: "#/approvals" }, "open the approvals inbox"), ".")),
    h("div", { class: "columns" },
      h("section", {}, h("h2", {}, "Inputs"), h("pre", { "data-testid": "run-inputs" },
        pretty(inputs(run)))),
      h("section", {}, h("h2", {}, "Result"), runOutcome(run))),
    usageSection(run.usage),
    h("h2", {}, `Steps (${run.steps.length})`),
    timeline(run, isOperator() ? forkAction(run, draft) : null),
  ];
}

/** The fork action of the run's journal (see journal.js): POST the fork, then open the new
 * run. Rejects with the API's error, which the fork form shows. */
function forkAction(run, draft) {
  async function submit(body) {
    const fork = await api(workflowPath(run.id, "fork"), { method: "POST", body });
    Object.assign(draft, { position: null, text: "" });
    flash([`Forked run ${run.id} at entry #${body.from_step} as `,
      h("a", { href: runHref(fork.id) }, fork.id), "."]);
    location.hash = runHref(fork.id);
  }
  return { draft, submit };
}

/** The arguments as they were passed: a list, keywords, or both. */
function inputs({ args = [], kwargs = {} }) {
  if (!Object.keys(kwargs).length) return args;
  return args.length ? { args, kwargs } : kwargs;
}

function runOutcome(run) {
  if (run.error) return errorBox(run.error, "run-error");
  if (run.status !== "SUCCESS") return h("p", { class: "muted" }, "Not finished yet.");
  return h("pre", { "data-testid": "run-output" }, pretty(run.output));
}

/** Cancel for a run still going; resume for one that ended badly, and retry when one of its
 * steps failed (retry forgets that step's failure; resume would replay it). Operators only. */
function runActions(run) {
  if (!isOperator()) {
    return h("p", { class: "muted", "data-testid": "read-only" },
      "Read-only token: cancelling, resuming, retrying or forking needs an operator token.");
  }
  const act = (verb, label, done) => async (event) => {
    if (verb === "cancel" && !confirm(`Cancel run ${run.id}? Its compensations run.`)) return;
    event.target.disabled = true;
    try {
      await api(workflowPath(run.id, verb), { method: "POST", body: {} });
      flash(done);
    } catch (err) {
      flash(`${label} failed: ${err.message}`, "error");
    } finally {
      event.target.disabled = false;
      refreshNow();
    }
  };
  const failed = run.steps.some((step) => step.status === "ERROR");
  const buttons = [
    ACTIVE.has(run.status) && h("button", { type: "button", class: "danger",
      "data-testid": "cancel", onclick: act("cancel", "Cancel", "Cancellation requested.") },
    "Cancel run"),
    RESUMABLE.has(run.status) && h("button", { type: "button", "data-testid": "resume",
      title: "Run it again from its journal: a failed step replays its failure",
      onclick: act("resume", "Resume", "Resumed.") }, "Resume"),
    RESUMABLE.has(run.status) && failed && h("button", { type: "button", "data-testid": "retry",
      title: "Forget the last failed step and run it again",
      onclick: act("retry", "Retry", "Retrying the failed step.") }, "Retry failed step"),
  ].filter(Boolean);
  return buttons.length ? h("div", { class: "actions" }, buttons) : null;
}

function usageSection(usage) {
  const saved = usage?.saved_by_replay;
  if (!usage || (!usage.model_calls && !saved?.model_calls)) return null;
  const figures = (u) => `${plural(u.model_calls, "call")}, ${u.input_tokens.toLocaleString()} ` +
    `input and ${u.output_tokens.toLocaleString()} output tokens`;
  const models = Object.entries(usage.by_model ?? {});
  return h("section", { class: "usage", "data-testid": "run-usage" },
    h("h2", {}, "LLM usage"),
    h("p", {}, figures(usage)),
    saved?.model_calls ? h("p", { "data-testid": "run-saved" }, "Replayed from the journal ",
      `when the run resumed, instead of being sent again: ${figures(saved)}.`) : null,
    models.length > 1 ? h("ul", {}, models.map(([model, u]) =>
      h("li", {}, h("span", { class: "mono" }, model), `: ${figures(u)}`))) : null);
}

// -- approvals inbox -----------------------------------------------------------------------

function approvalsView() {
  const list = h("div", { class: "approvals", "data-testid": "approvals-list" });
  const empty = h("p", { class: "muted", "data-testid": "approvals-empty", hidden: true },
    "No approval is waiting for a decision.");
  const showAll = h("input", { type: "checkbox", onchange: () => refreshNow() });
  const el = h("section", { "data-testid": "approvals-page" },
    h("div", { class: "page-head" }, h("h1", {}, "Approvals"),
      h("label", { class: "inline" }, showAll, " Show decided ones too")),
    isOperator() ? null : h("p", { class: "notice", "data-testid": "read-only" }, "Read-only ",
      "token: you can see the requests, but approving or rejecting needs an operator token."),
    list, empty);

  async function refresh() {
    const { approvals } = showAll.checked
      ? await api("/api/v1/approvals?all=true") : { approvals: state.pending };
    syncChildren(list, approvals, approvalKey, approvalCard);
    empty.hidden = approvals.length > 0;
  }
  return { title: "Approvals", nav: "approvals", el, refresh };
}

let cardCount = 0; // unique ids for the labels of each card's form

function approvalCard(approval) {
  const n = ++cardCount;
  const pending = approval.status === "PENDING";
  return h("article", { class: "card approval", "data-testid": "approval",
    "data-workflow-id": approval.workflow_id, "data-name": approval.name,
    "aria-labelledby": `approval-${n}` },
    h("div", { class: "page-head" },
      h("h2", { id: `approval-${n}` }, approval.name),
      statusBadge(approval.status, "approval-status")),
    h("p", {}, "Run ", h("a", { href: runHref(approval.workflow_id), class: "mono" },
      approval.workflow_id), ` (${approval.workflow_name}), asked `, timeEl(approval.requested_at)),
    proposal(approval.details),
    pending ? null : decision(approval),
    pending && isOperator() ? decisionForm(approval, n) : null);
}

/** How a request that is no longer pending ended. */
function decision({ status, decided_by: by, decided_at: at, comment }) {
  const how = { APPROVED: `Approved by ${by}`, REJECTED: `Rejected by ${by}`,
    TIMED_OUT: "Timed out", CLOSED: "Closed (the run ended without a decision)" }[status];
  return h("p", { "data-testid": "approval-decision" }, how ?? status, " ", timeEl(at),
    comment ? `: “${comment}”` : "");
}

/** The proposed action: a tool call (perdure.agents tools send {tool, description,
 * arguments}) reads as such; any other details are shown as JSON. */
function proposal(details) {
  if (details == null) return h("p", { class: "muted" }, "No details were attached.");
  if (typeof details === "object" && typeof details.tool === "string" && "arguments" in details) {
    return h("div", { class: "proposal" },
      h("p", {}, "Proposed call of tool ", h("strong", { class: "mono" }, details.tool),
        details.description ? ` — ${details.description}` : ""),
      h("pre", { "data-testid": "approval-details" }, pretty(details.arguments)));
  }
  return h("pre", { class: "proposal", "data-testid": "approval-details" }, pretty(details));
}

function decisionForm(approval, n) {
  const comment = h("textarea", { id: `comment-${n}`, rows: 2, "data-testid": "approval-comment",
    placeholder: "Why (optional): kept with the decision and given to the workflow" });
  const error = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "decision", onsubmit: (e) => e.preventDefault() },
    h("label", { for: `comment-${n}` }, "Comment"), comment);

  const decide = (verb) => async () => {
    const buttons = form.querySelectorAll("button");
    buttons.forEach((b) => { b.disabled = true; });
    error.textContent = "";
    try {
      await api(workflowPath(approval.workflow_id, "approvals", approval.name, verb),
        { method: "POST", body: { comment: comment.value.trim() || null } });
      state.decided.add(approvalKey(approval));
      form.closest("article")?.remove(); // leaves the inbox at once
      flash([`${verb === "approve" ? "Approved" : "Rejected"} “${approval.name}” for run `,
        h("a", { href: runHref(approval.workflow_id) }, approval.workflow_id), "."]);
    } catch (err) {
      error.textContent = err.message;
      buttons.forEach((b) => { b.disabled = false; });
    }
    refreshNow();
  };
  form.append(h("div", { class: "actions" },
    h("button", { type: "button", class: "primary", "data-testid": "approve",
      onclick: decide("approve") }, "Approve"),
    h("button", { type: "button", class: "danger", "data-testid": "reject",
      onclick: decide("reject") }, "Reject")), error);
  return form;
}

// -- start ---------------------------------------------------------------------------------

async function boot() {
  $("#sign-out").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshNow(); });
  if (storedToken()) {
    try {
      setUser(await api("/api/v1/whoami"));
    } catch (err) {
      if (err.status === 401) return; // api() signed out and shows the sign-in page
      flash(err.message, "poll");
    }
  }
  route();
}

boot();
