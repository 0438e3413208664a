// The dashboard's DOM and formatting helpers, shared by app.js and journal.js: building
// elements (data only ever as text, never as HTML), times, durations, statuses and errors.
// Pure functions of their arguments: no API calls, no page state.

/** Build an element: attributes (null/false skipped, true = present), `on*` listeners, and
 * children (nodes, or anything else as text: this is what keeps data from becoming markup). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child != null && child !== false) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const runHref = (id) => `#/runs/${encodeURIComponent(id)}`;
export const pretty = (value) => JSON.stringify(value, null, 2);

/** The API path of a workflow (and of something under it), every part percent-encoded. */
export const workflowPath = (id, ...rest) =>
  ["/api/v1/workflows", encodeURIComponent(id), ...rest.map(encodeURIComponent)].join("/");

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "short",
  timeStyle: "medium" });

export const timeEl = (iso) => (iso ? h("time", { datetime: iso, title: iso },
  dateFormat.format(new Date(iso))) : h("span", { class: "muted" }, "—"));

export function formatDuration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return "—";
  if (ms < 10) return `${ms.toFixed(ms < 1 ? 2 : 1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  const s = Math.round(ms / 1000);
  const [d, hr, m] = [Math.floor(s / 86400), Math.floor(s / 3600) % 24, Math.floor(s / 60) % 60];
  if (d) return `${d} d ${hr} h`;
  if (hr) return `${hr} h ${m} min`;
  return `${m} min ${s % 60} s`;
}

export const plural = (n, noun) => `${n} ${noun}${n === 1 ? "" : "s"}`;
export const since = (iso) => Date.now() - Date.parse(iso);
export const between = (from, to) => Date.parse(to) - Date.parse(from);

/** Update the still-counting durations (elements with data-since) under `root`. */
export const tickDurations = (root) => root.querySelectorAll("[data-since]")
  .forEach((el) => { el.textContent = formatDuration(since(el.dataset.since)); });

export const statusBadge = (status, testid) =>
  h("span", { class: `status status-${status.toLowerCase()}`, "data-testid": testid }, status);

/** An error as `Type: message`; the type by its class name, the full path on hover. */
export const errorBox = (error, testid) => h("div", { class: "error-box", "data-testid": testid },
  h("strong", { title: error.type }, error.type.split(".").pop()),
  error.message ? `: ${error.message}` : "");

/** Keep `container`'s children in step with `items`, re-rendering only the items whose data
 * changed, so typed comments, focus and open <details> survive the live refresh. */
const signatures = new WeakMap();
export function syncChildren(container, items, keyOf, render) {
  const old = new Map([...container.children].map((el) => [el.dataset.key, el]));
  items.forEach((item, index) => {
    const key = keyOf(item);
    const signature = JSON.stringify(item);
    let el = old.get(key);
    old.delete(key);
    if (!el || signatures.get(el) !== signature) {
      const fresh = render(item);
      fresh.dataset.key = key;
      signatures.set(fresh, signature);
      if (el) el.replaceWith(fresh);
      el = fresh;
    }
    // Move only what is out of place: moving a node would take the focus out of it.
    const there = container.children[index];
    if (there !== el) container.insertBefore(el, there ?? null);
  });
  for (const el of old.values()) el.remove();
}
