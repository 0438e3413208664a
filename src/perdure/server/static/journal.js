// A run's journal on the dashboard's run page (#/runs/<id>): one item per journal entry with
// its position, status, duration, attempts, tokens, output or error, then the steps waiting
// for their next attempt; and, for an operator, a "Fork from here" action on each entry.
//
// Forking at entry N makes a new run of the same workflow with the same inputs that replays
// entries 0..N-1 from this run's journal and runs from N on (POST .../fork); with a
// replacement output, entry N records that value instead and the new run goes on from N+1.
// The run itself is never changed. The action asks for confirmation in an inline form (no
// browser dialog), where the operator may paste the replacement output as JSON.

import { between, errorBox, formatDuration, h, plural, pretty, statusBadge, timeEl }
  from "./dom.js";

const MODEL_STEPS = ["openai.", "anthropic."]; // journaled model calls (see perdure/_usage.py)

/** The tokens a model-call step's recorded response reports, or null for other steps. */
export function stepTokens(step) {
  if (!MODEL_STEPS.some((prefix) => step.name.startsWith(prefix))) return null;
  const usage = step.output?.usage;
  if (!usage) return null;
  // OpenAI chat completions say prompt/completion tokens; Responses and Anthropic input/output.
  const count = (...names) => names.map((n) => usage[n]).find(Number.isInteger) ?? 0;
  return { input: count("prompt_tokens", "input_tokens"),
    output: count("completion_tokens", "output_tokens") };
}

/** The run's journal as a list. `fork` is null for a read token; for an operator it is
 * {draft, submit(body)}: `draft` ({position, text}) is the open fork form, kept by the
 * caller so that it survives the page's re-renders; `submit` POSTs the fork and resolves
 * once the page moved on to the new run (it rejects with the API's error). */
export function timeline(run, fork) {
  const longest = Math.max(1, ...run.steps.map((s) => s.duration_ms ?? 0));
  const items = run.steps.map((step) => stepItem(run, step, longest, fork));
  items.push(...(run.retrying ?? []).map(retryingItem));
  if (!items.length) return h("p", { class: "muted", "data-testid": "timeline" }, "No step yet.");
  return h("ol", { class: "timeline", "data-testid": "timeline" }, items);
}

function stepItem(run, step, longest, fork) {
  const duration = step.duration_ms ?? between(step.started_at, step.finished_at);
  const bar = h("span", { class: `bar bar-${step.status.toLowerCase()}` });
  bar.style.width = `${Math.max(0.5, (100 * duration) / longest)}%`;
  const tokens = stepTokens(step);
  const retries = step.attempts > 1 ? `${step.attempts} attempts` : null;
  const item = h("li", { class: "step", "data-testid": "step", "data-name": step.name,
    "data-position": step.position },
    h("div", { class: "step-line" },
      h("span", { class: "pos" }, `#${step.position}`),
      h("span", { class: "mono step-name", "data-testid": "step-name" }, step.name),
      statusBadge(step.status, "step-status"),
      h("span", { class: "num", "data-testid": "step-duration" }, formatDuration(duration)),
      h("span", { class: "track", "aria-hidden": "true" }, bar)),
    h("div", { class: "step-facts" },
      retries ? h("span", { class: "retries", "data-testid": "step-retries" }, retries) : null,
      tokens ? h("span", { "data-testid": "step-tokens" },
        `${tokens.input} input / ${tokens.output} output tokens`) : null,
      h("span", { class: "muted" }, "started ", timeEl(step.started_at)),
      fork ? forkButton(run, step, fork) : null),
    step.error ? errorBox(step.error, "step-error") : null,
    failureList(step.failures, `${step.key}:failures`),
    step.status === "SUCCESS" ? h("details", { "data-key": `${step.key}:output` },
      h("summary", {}, "Output"), h("pre", {}, pretty(step.output))) : null);
  if (fork?.draft.position === step.position) item.append(forkForm(run, step, fork));
  return item;
}

function retryingItem(retry) {
  return h("li", { class: "step retrying", "data-testid": "step-retrying" },
    h("div", { class: "step-line" }, h("span", { class: "pos" }, "…"),
      h("span", { class: "mono step-name" }, retry.name), statusBadge("RETRYING")),
    h("p", {}, `Attempt ${retry.next_attempt} due `, timeEl(retry.retry_at)),
    failureList(retry.failures, `${retry.key}:retrying`));
}

function failureList(failures, key) {
  if (!failures?.length) return null;
  return h("details", { class: "failures", "data-key": key },
    h("summary", {}, plural(failures.length, "failed attempt")),
    h("ol", {}, failures.map((f) => h("li", {}, `Attempt ${f.attempt} failed at `,
      timeEl(f.failed_at), ", next attempt at ", timeEl(f.retry_at), ": ",
      errorBox(f.error, "attempt-error")))));
}

// -- fork from here ------------------------------------------------------------------------

/** Opens (or closes) the entry's fork form; one form is open at a time. */
function forkButton(run, step, fork) {
  return h("button", { type: "button", class: "link fork-from-here",
    "data-testid": "fork-from-here", "aria-expanded": String(fork.draft.position === step.position),
    title: "Start a new run that replays the entries before this one and runs from here",
    onclick: (event) => {
      const item = event.target.closest("li");
      const open = fork.draft.position === step.position;
      item.closest("ol")?.querySelectorAll('[data-testid="fork-form"]').forEach((f) => f.remove());
      item.closest("ol")?.querySelectorAll('[data-testid="fork-from-here"]')
        .forEach((b) => b.setAttribute("aria-expanded", "false"));
      Object.assign(fork.draft, { position: open ? null : step.position, text: "" });
      if (open) return;
      event.target.setAttribute("aria-expanded", "true");
      item.append(forkForm(run, step, fork));
      item.querySelector("textarea").focus();
    } }, "Fork from here");
}

/** What a fork at entry `n` replays, in words. */
function replays(n) {
  if (n === 0) return "replays nothing";
  return n === 1 ? "replays entry #0" : `replays entries #0 to #${n - 1}`;
}

/** The confirmation of a fork at this entry, with an optional replacement output. */
function forkForm(run, step, fork) {
  const n = step.position;
  const id = `fork-output-${n}`;
  const output = h("textarea", { id, rows: 3, spellcheck: "false", "data-testid": "fork-output",
    placeholder: 'Empty: this step runs again. Or a JSON value it records instead, e.g. "yes"',
    oninput: () => { fork.draft.text = output.value; error.textContent = ""; } });
  output.value = fork.draft.text;
  const error = h("p", { class: "error", role: "alert", "data-testid": "fork-error" });
  const confirm = h("button", { type: "submit", class: "primary", "data-testid": "fork-confirm" },
    "Fork");
  const cancel = h("button", { type: "button", "data-testid": "fork-cancel",
    onclick: () => {
      Object.assign(fork.draft, { position: null, text: "" });
      form.closest("li")?.querySelector('[data-testid="fork-from-here"]')
        ?.setAttribute("aria-expanded", "false");
      form.remove();
    } }, "Cancel");

  async function submit(event) {
    event.preventDefault();
    const body = { from_step: n };
    const text = output.value.trim();
    if (text) {
      try {
        body.replace_output = JSON.parse(text);
      } catch (err) {
        error.textContent = `The replacement output is not JSON (${err.message}): write ` +
          'a JSON value, e.g. {"answer": 42}, or "text" for a string.';
        output.focus();
        return;
      }
    }
    confirm.disabled = cancel.disabled = true;
    error.textContent = "";
    try {
      await fork.submit(body);
    } catch (err) {
      error.textContent = `Fork failed: ${err.message}`;
      confirm.disabled = cancel.disabled = false;
    }
  }

  const form = h("form", { class: "fork", "data-testid": "fork-form", onsubmit: submit },
    h("p", {}, `Fork this run at entry #${n}: a new run of `, h("span", { class: "mono" },
      run.name), ` with the same inputs, which ${replays(n)} from this run's journal and runs `,
    `from #${n} on. With a replacement output, entry #${n} records it instead of running `,
    `again, and the new run goes on from #${n + 1}. This run is not changed.`),
    h("label", { for: id }, "Replacement output (JSON, optional)"), output,
    h("div", { class: "actions" }, confirm, cancel), error);
  return form;
}
