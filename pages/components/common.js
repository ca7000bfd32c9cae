// Shared by the review desk and the card grid (prepended to each component's module by __init__.py).
//
// Streamlit calls a component's default function again whenever its data changes, and runs the
// returned cleanup only on unmount, so everything that must exist once (the key listener, the
// action queues) lives on `window.__darkroom` and each call only swaps in its handler.

const DR = (window.__darkroom ??= { handler: null, installed: false, queues: {}, seqs: {}, views: {} });

// One capture-phase listener for the whole window: it runs before Streamlit's own hotkeys, and a
// key the desk uses is stopped there, so it can never reach Streamlit's menu actions.
if (!DR.installed) {
  window.addEventListener("keydown", (e) => DR.handler && DR.handler(e), true);
  DR.installed = true;
}

/** True while the user types somewhere (inputs, text areas, selects, editable text): keys are theirs. */
function drTyping(e) {
  const t = (e.composedPath && e.composedPath()[0]) || e.target;
  if (!t || !t.tagName) return false;
  const tag = t.tagName.toUpperCase();
  return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || t.isContentEditable === true;
}

/** True when a control of the page (a button, link, field, menu) has the keyboard focus. */
function drControlFocused() {
  let el = document.activeElement;
  while (el && el.shadowRoot && el.shadowRoot.activeElement) el = el.shadowRoot.activeElement;
  if (!el || el === document.body) return false;
  return el.matches('button, a[href], input, select, textarea, summary, [role="button"], [role="tab"], [role="menuitem"], [role="option"], [contenteditable="true"]');
}

/** A Streamlit dialog (e.g. a bulk confirmation) owns the keyboard while it is open. */
function drDialogOpen() {
  return document.querySelector('[data-testid="stDialog"]') !== null;
}

/**
 * Queue an action and hand the whole unacknowledged queue to Python as the "actions" state.
 *
 * A state value (not a trigger) is used because Streamlit keeps only the newest value of a widget
 * while a run is busy: with the queue, keys typed faster than the app answers are all applied, in order.
 */
function drSend(component, key, action) {
  DR.seqs[key] = (DR.seqs[key] || 0) + 1;
  const queue = (DR.queues[key] ||= []);
  queue.push({ ...action, seq: DR.seqs[key] });
  if (queue.length > 200) queue.splice(0, queue.length - 200);
  component.setStateValue("actions", queue.slice());
  drRetry(component, key);
}

/**
 * Until Python acknowledges the queue, send it again now and then (a rerun Streamlit dropped is not
 * the end of the keys). Through the component now mounted: an unmounted one's state is a widget the
 * page no longer draws, and re-sending it would only rerun the app every 1.5 s for ever.
 */
function drRetry(component, key) {
  DR.retry ||= {};
  clearTimeout(DR.retry[key]);
  DR.retry[key] = setTimeout(() => {
    const queue = DR.queues[key] || [];
    const current = (DR.mounted || {})[key];
    if (!queue.length || !current) return;
    current.setStateValue("actions", [...queue, { nonce: Date.now() }]);  // a new value, so it is sent; Python skips the nonce
    drRetry(current, key);
  }, 1500);
}

/** Forget the actions Python has applied (it passes back the last sequence number it saw); ``component`` is the one now drawn. */
function drAck(key, ack, component) {
  (DR.mounted ||= {})[key] = component;
  const queue = DR.queues[key] || [];
  DR.queues[key] = queue.filter((a) => a.seq > (ack || 0));
  if (!DR.queues[key].length && DR.retry) clearTimeout(DR.retry[key]);
  if ((DR.seqs[key] || 0) < (ack || 0)) DR.seqs[key] = ack;  // a reloaded window continues after what was applied
}

/** The component left the page (another page, another prompt's error view): stop re-sending through it. */
function drUnmount(key, component) {
  const current = (DR.mounted || {})[key];
  if (!current || current.parentElement !== component.parentElement) return;  // a newer mount took over
  delete DR.mounted[key];
  if (DR.retry) clearTimeout(DR.retry[key]);
}

/** Element helper: tag, attributes (class, title, data-*, ...), children (strings become text, never HTML). */
function drEl(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return el;
}

/** "★★★☆☆" for 3 stars; an empty string when unrated. */
function drStars(n) {
  return n ? "★".repeat(n) + "☆".repeat(5 - n) : "";
}

/** The `?` overlay: every key and what it does, from the list Python passes. */
function drHelp(root, rows, onClose) {
  const table = drEl("table", { class: "dr-help-table" },
    rows.map(([keys, what]) => drEl("tr", {}, drEl("td", { class: "dr-keys" }, keys), drEl("td", {}, what))));
  const box = drEl("div", { class: "dr-help", role: "dialog", "aria-label": "Keyboard shortcuts", "data-testid": "drHelp" },
    drEl("div", { class: "dr-help-head" }, drEl("strong", {}, "Keyboard shortcuts"),
      drEl("button", { class: "dr-btn", onclick: onClose, "aria-label": "Close" }, "Close (Esc)")),
    table,
    drEl("p", { class: "dr-muted" }, "Keys are ignored while you type in a text box; Esc leaves it."));
  const shade = drEl("div", { class: "dr-shade", onclick: (e) => { if (e.target === shade) onClose(); } }, box);
  root.appendChild(shade);
  return shade;
}

/** Normalised name of a key event: "ArrowRight", "k", "Shift+Tab", "Alt+2" (digits by physical key). */
function drKeyName(e) {
  const digit = /^Digit([0-9])$/.exec(e.code || "") || /^Numpad([0-9])$/.exec(e.code || "");
  let base = e.key;
  if (digit && (e.altKey || e.shiftKey)) base = digit[1];
  if (base === " ") base = "Space";
  if (base.length === 1) base = base.toLowerCase();
  const mods = [];
  if (e.ctrlKey || e.metaKey) mods.push("Ctrl");
  if (e.altKey) mods.push("Alt");
  if (e.shiftKey && base !== "?" && !(base.length === 1 && !/[0-9a-z]/.test(base))) mods.push("Shift");
  return [...mods, base].join("+");
}
