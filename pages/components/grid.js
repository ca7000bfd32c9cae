// The culling grid: cards with thumbnail, title (id on hover), score and decision badges and stars.
// Click the image to open Review; click / Ctrl-click / Shift-click or the arrow keys select cards,
// then the review keys (1–5, 0, P, X, U, Z) act on the selection. The selection is mirrored to
// Python as the "selected" state (for the bulk actions); actions go through the queue in common.js.

// The first cards' thumbnails are fetched at once (they are in view on any window): lazy loading
// waits for a layout pass and an intersection check first.
const EAGER_THUMBS = 12;

function gridView(key, pageKey) {
  let view = DR.views[key];
  if (!view || view.pageKey !== pageKey) {
    // thumbs: the <img> of each thumbnail URL drawn last time, moved into the next drawing instead of
    // made again. A Gallery following a run is redrawn as images land; new elements would load and
    // decode every thumbnail again (a blank flash each time), and one not yet loaded would start over.
    view = DR.views[key] = { pageKey, selected: new Set(), anchor: null, cursor: null, help: false, cols: 1, thumbs: new Map() };
  }
  return view;
}

function scoreClass(score) {
  if (score === null || score === undefined) return "dr-badge";
  return score >= 7.5 ? "dr-badge dr-s-hi" : score >= 5 ? "dr-badge dr-s-mid" : "dr-badge dr-s-lo";
}

function gridCard(card, i, view) {
  const selected = view.selected.has(card.id);
  const classes = ["dr-card", selected ? "dr-sel" : "", view.cursor === i ? "dr-cursor" : ""].join(" ").trim();
  const kept = card.url && !view.drawn.has(card.url) ? view.thumbs.get(card.url) : undefined;  // (two cards of one image: two elements)
  const thumb = card.url
    ? kept ?? drEl("img", { class: "dr-thumb", src: card.url, alt: card.title, loading: i < EAGER_THUMBS ? "eager" : "lazy", decoding: "async",
        draggable: "false", title: "Open in Review", "data-role": "open" })
    : drEl("div", { class: "dr-thumb dr-thumb-missing", "data-role": "open" }, "no thumbnail");
  if (card.url && !view.drawn.has(card.url)) view.drawn.set(card.url, thumb);
  const decision = card.tiebreak
    ? drEl("span", { class: "dr-badge dr-tie", title: card.in_force_label }, "tie-break")
    : card.decision && card.decision !== "none"
      ? drEl("span", { class: card.decision === "approved" ? "dr-badge dr-ok" : "dr-badge dr-no", title: card.in_force_label }, card.decision)
      : null;
  const score = card.score === null || card.score === undefined ? "–" : card.score.toFixed(1);
  const mine = card.my_stars ? drStars(card.my_stars) : "☆☆☆☆☆";
  const mean = card.count && (!card.my_stars || card.count > 1) ? `⌀${card.mean.toFixed(1)}·${card.count}` : "";
  return drEl("div", { class: classes, "data-testid": "drCard", "data-id": card.id, "data-index": i, title: card.tip,
      "aria-selected": selected ? "true" : "false" },
    drEl("div", { class: "dr-thumb-wrap" },
      thumb,
      drEl("div", { class: "dr-check", "data-role": "check", title: "Select (Ctrl-click, Shift-click for a range)" }, selected ? "✓" : ""),
      drEl("div", { class: "dr-over dr-over-tr" }, decision, card.disputed ? drEl("span", { class: "dr-badge dr-tie", title: "reviewers disagree" }, "disputed") : null),
      drEl("div", { class: "dr-over dr-over-bl" }, drEl("span", { class: scoreClass(card.score), title: "judge score" }, score)),
      card.best ? drEl("div", { class: "dr-over dr-over-br" }, drEl("span", { class: "dr-badge dr-dark", title: "best iteration of its prompt" }, "best")) : null),
    drEl("div", { class: "dr-card-title" }, drEl("span", { class: "dr-muted" }, `${card.number} · `), card.title),
    drEl("div", { class: "dr-card-line" },
      drEl("span", { class: "dr-stars", title: card.my_stars ? "your stars" : "you have not starred it" }, mine),
      mean ? drEl("span", { class: "dr-muted", title: card.others_text || "" }, mean) : null,
      card.my_decision && card.my_decision !== "none" && card.my_decision !== card.decision
        ? drEl("span", { class: "dr-muted", title: "your decision" }, `you: ${card.my_decision}`) : null));
}

export default function (component) {
  const { data: d, parentElement } = component;
  const key = d.key;
  const view = gridView(key, d.page_key);
  drAck(key, d.ack, component);
  const ids = d.cards.map((c) => c.id);
  for (const id of [...view.selected]) if (!ids.includes(id)) view.selected.delete(id);
  if (view.cursor !== null && view.cursor >= ids.length) view.cursor = ids.length ? ids.length - 1 : null;

  [...parentElement.children].filter((n) => n.classList && n.classList.contains("dr-grid-root")).forEach((n) => n.remove());
  const root = drEl("div", { class: "dr-grid-root", "data-testid": "drGrid", "data-page": d.page_key });
  root.style.setProperty("--dr-card", `${d.size}px`);
  parentElement.appendChild(root);

  const publish = () => component.setStateValue("selected", d.cards.filter((c) => view.selected.has(c.id)).map((c) => c.id));
  const targets = () => {
    if (view.selected.size) return d.cards.filter((c) => view.selected.has(c.id)).map((c) => c.id);
    return view.cursor !== null && d.cards[view.cursor] ? [d.cards[view.cursor].id] : [];
  };

  function selectRange(from, to, add) {
    if (!add) view.selected.clear();
    const [a, b] = from <= to ? [from, to] : [to, from];
    for (let i = a; i <= b; i++) view.selected.add(ids[i]);
  }

  function optimistic(action, targetIds) {
    for (const c of d.cards) {
      if (!targetIds.includes(c.id) || !d.enabled) continue;
      if (action.a === "stars") c.my_stars = action.v;
      else if (action.a === "clear_stars") c.my_stars = null;
      else if (action.a === "approve") c.my_decision = "approved";
      else if (action.a === "reject") c.my_decision = "rejected";
      else if (action.a === "clear_decision") c.my_decision = "none";
    }
  }

  function render() {
    root.replaceChildren();
    const n = view.selected.size;
    root.appendChild(drEl("div", { class: "dr-grid-status", "data-testid": "drGridStatus" },
      n ? `${n} selected · 1–5 stars, 0 clear, P approve, X reject, U clear decision, Z undo · Esc clears · ? keys`
        : "Click an image to review it · click a card, Shift-click or Shift+arrows to select · ? keys"));
    view.drawn = new Map();
    const grid = drEl("div", { class: "dr-grid" }, d.cards.map((c, i) => gridCard(c, i, view)));
    view.thumbs = view.drawn;
    root.appendChild(grid);
    if (d.cards.length === 0) root.appendChild(drEl("div", { class: "dr-empty" }, d.empty || "No images."));
    if (view.help) root.appendChild(drHelp(root, d.help, () => { view.help = false; render(); }));
    requestAnimationFrame(() => {
      const cols = getComputedStyle(grid).gridTemplateColumns.split(" ").filter(Boolean).length;
      view.cols = Math.max(1, cols);
    });
  }

  root.addEventListener("click", (e) => {
    const cardEl = e.target.closest(".dr-card");
    if (!cardEl) return;
    const i = Number(cardEl.dataset.index), card = d.cards[i];
    const role = e.target.closest("[data-role]")?.dataset.role;
    if (e.shiftKey) {
      selectRange(view.anchor ?? i, i, e.ctrlKey || e.metaKey);
    } else if (e.ctrlKey || e.metaKey || role === "check") {
      if (view.selected.has(card.id)) view.selected.delete(card.id); else view.selected.add(card.id);
      view.anchor = i;
    } else if (role === "open") {
      drSend(component, key, { a: "open", item: card.item, number: card.number });
      return;
    } else {
      view.selected.clear();
      view.selected.add(card.id);
      view.anchor = i;
    }
    view.cursor = i;
    render();
    publish();
  });

  const bindings = {
    1: { a: "stars", v: 1 }, 2: { a: "stars", v: 2 }, 3: { a: "stars", v: 3 }, 4: { a: "stars", v: 4 }, 5: { a: "stars", v: 5 },
    0: { a: "clear_stars" }, p: { a: "approve" }, x: { a: "reject" }, u: { a: "clear_decision" },
  };

  function move(delta, extend) {
    if (!ids.length) return;
    const from = view.cursor ?? 0;
    const to = view.cursor === null ? 0 : Math.min(ids.length - 1, Math.max(0, from + delta));
    if (extend) {
      if (view.anchor === null) view.anchor = from;
      selectRange(view.anchor, to, false);
    } else {
      view.selected.clear();
      view.selected.add(ids[to]);
      view.anchor = to;
    }
    view.cursor = to;
    render();
    publish();
    const el = root.querySelector(`.dr-card[data-index="${to}"]`);
    if (el) el.scrollIntoView({ block: "nearest" });
  }

  function onKey(e) {
    if (!root.isConnected) return;
    const name = drKeyName(e);
    if (drTyping(e)) {
      if (name === "Escape") { const t = e.composedPath()[0]; t && t.blur && t.blur(); e.preventDefault(); }
      return;
    }
    if (drDialogOpen()) return;
    const extend = name.startsWith("Shift+");
    const base = extend ? name.slice(6) : name;
    let handled = true;
    if (name === "?" || name === "Shift+?") { view.help = !view.help; render(); }
    else if (name === "Escape") {
      if (view.help) view.help = false; else { view.selected.clear(); view.anchor = null; publish(); }
      render();
    }
    else if (base === "ArrowRight" || base === "k") move(1, extend);
    else if (base === "ArrowLeft" || base === "j") move(-1, extend);
    else if (base === "ArrowDown") move(view.cols, extend);
    else if (base === "ArrowUp") move(-view.cols, extend);
    else if (base === "Home") move(-ids.length, extend);
    else if (base === "End") move(ids.length, extend);
    else if (name === "Ctrl+a") { ids.forEach((id) => view.selected.add(id)); render(); publish(); }
    else if (name === "PageDown" || name === "PageUp") drSend(component, key, { a: "page", v: name === "PageDown" ? 1 : -1 });
    else if ((name === "Enter" || name === "f" || name === "Space") && view.cursor !== null) {
      const c = d.cards[view.cursor];
      drSend(component, key, { a: "open", item: c.item, number: c.number });
    }
    else if (name === "z" || name === "Ctrl+z") drSend(component, key, { a: "undo" });
    else if (bindings[name]) {
      const t = targets();
      if (!t.length) { handled = true; root.querySelector(".dr-grid-status").textContent = "Select a card first (click it, or press an arrow key)."; }
      else { optimistic(bindings[name], t); drSend(component, key, { ...bindings[name], ids: t }); render(); }
    }
    else handled = false;
    if (handled) { e.preventDefault(); e.stopImmediatePropagation(); }
  }

  DR.handler = onKey;
  render();
  return () => { if (DR.handler === onKey) DR.handler = null; drUnmount(key, component); };
}
