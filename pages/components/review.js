// The review desk: one prompt's iterations side by side at the largest size that fits, the keys,
// the details drawer, the loupe and compare. Python owns the state (it lives in the URL); this
// draws it and sends actions ({a: "next"} ...) through the queue in common.js.

const REVIEW_GAP = 12;      // px between images
const CAPTION_H = 46;       // px under each image for its caption

function reviewView(key) {
  return (DR.views[key] ||= { focus: null, focusSeq: 0, loupe: false, details: false, help: false, imgs: new Map(),
    z: { m: 1, u: 0.5, v: 0.5 }, cz: { m: 1, u: 0.5, v: 0.5 }, cmpKind: "slider", cmpPos: 0.5, cmpOpacity: 0.5,
    prefetched: new Map() });
}

/** One <img> per URL for the life of the page: going back to a prompt reuses the decoded image. */
function reviewImg(view, url) {
  let img = view.imgs.get(url);
  if (!img) {
    img = drEl("img", { src: url, decoding: "async", draggable: "false", alt: "" });
    view.imgs.set(url, img);
    if (view.imgs.size > 60) view.imgs.delete(view.imgs.keys().next().value);
  }
  return img;
}

function reviewPrefetch(view, urls) {
  for (const url of urls || []) {
    if (view.prefetched.has(url) || view.imgs.has(url)) continue;
    const img = new Image();
    img.decoding = "async";
    img.src = url;
    img.decode().catch(() => {});
    view.prefetched.set(url, img);
  }
  while (view.prefetched.size > 24) view.prefetched.delete(view.prefetched.keys().next().value);
}

function decisionClass(decision, tiebreak) {
  if (tiebreak) return "dr-badge dr-tie";
  return decision === "approved" ? "dr-badge dr-ok" : decision === "rejected" ? "dr-badge dr-no" : "dr-badge";
}

function reviewCaption(it) {
  const score = it.score === null || it.score === undefined ? "not judged" : it.score.toFixed(1);
  const delta = it.delta === null || it.delta === undefined ? "" : ` (${it.delta >= 0 ? "+" : "−"}${Math.abs(it.delta).toFixed(1)})`;
  const mine = it.mine_stars ? drStars(it.mine_stars) : "☆☆☆☆☆";
  const mean = it.count ? `⌀ ${it.mean.toFixed(1)} · ${it.count}` : "no stars yet";
  return drEl("div", { class: "dr-caption" },
    drEl("div", { class: "dr-line" },
      drEl("span", { class: "dr-num" }, `${it.number}`),
      drEl("span", {}, it.label),
      drEl("span", { class: "dr-score", title: "judge score (change from the previous iteration)" }, score + delta),
      drEl("span", { class: it.in_force_label ? decisionClass(it.in_force, it.tiebreak) : "", title: "decision in force" }, it.in_force_label || "")),
    drEl("div", { class: "dr-line" },
      drEl("span", { class: "dr-stars", title: "your stars" }, mine),
      drEl("span", { class: "dr-muted", title: it.others_text || "nobody else rated it" }, mean),
      it.others && it.others.length ? drEl("span", { class: "dr-others", title: it.others_text },
        it.others.map(([name, stars, decision]) => `${name} ${stars ? stars + "★" : ""}${decision && decision !== "none" ? " " + decision : ""}`).join(" · ")) : null,
      it.mine_decision && it.mine_decision !== "none"
        ? drEl("span", { class: decisionClass(it.mine_decision, false) }, `you: ${it.mine_decision}`) : null));
}

/** The largest height at which every image fits side by side in width × height. */
function reviewFitHeight(its, width, height) {
  const ratios = its.map((it) => (it.w && it.h ? it.w / it.h : 1));
  const sum = ratios.reduce((a, b) => a + b, 0) || 1;
  const byWidth = (width - REVIEW_GAP * (its.length - 1)) / sum;
  const natural = Math.max(...its.map((it) => it.h || 0)) || Infinity;
  return Math.max(120, Math.floor(Math.min(height, byWidth, natural)));
}

function reviewLayout(root, d) {
  const row = root.querySelector(".dr-row");
  if (!row) return;
  const top = root.getBoundingClientRect().top;
  const free = window.innerHeight - Math.max(0, top) - (d.reserve ?? 10);
  const h = reviewFitHeight(d.iterations, row.clientWidth || root.clientWidth, Math.max(160, free - CAPTION_H));
  row.querySelectorAll(".dr-cell").forEach((cell, i) => {
    const it = d.iterations[i], ratio = it.w && it.h ? it.w / it.h : 1;
    cell.style.width = `${Math.floor(h * ratio)}px`;
    const frame = cell.querySelector(".dr-frame");
    frame.style.height = `${h}px`;
  });
  root.style.minHeight = `${h + CAPTION_H}px`;
}

function reviewDetails(it) {
  const d = it.details || {};
  const section = (title, ...body) => drEl("section", {}, drEl("h4", {}, title), ...body);
  const kids = [drEl("div", { class: "dr-help-head" }, drEl("strong", {}, `Iteration ${it.number} · details`),
    drEl("span", { class: "dr-muted" }, "I or Esc to close"))];
  if (d.criteria && d.criteria.length)
    kids.push(section("Criteria", drEl("div", {}, d.criteria.map(([k, v]) => drEl("span", { class: "dr-chip" }, `${k} ${v}`)))));
  if (d.checks && d.checks.length)
    kids.push(section("Checks", drEl("ul", { class: "dr-list" }, d.checks.map((c) => drEl("li", {},
      drEl("span", { class: `dr-ans dr-ans-${c.answer}` }, c.answer === "yes" ? "✓" : c.answer === "no" ? "✗" : "?"), " ", c.question,
      c.evidence ? drEl("div", { class: "dr-muted" }, c.evidence) : null)))));
  if (d.issues && d.issues.length)
    kids.push(section("Issues", drEl("ul", { class: "dr-list" }, d.issues.map((x) => drEl("li", {},
      drEl("strong", {}, x.kind || ""), ": ", x.description || "", x.suggestion ? drEl("div", { class: "dr-muted" }, "→ " + x.suggestion) : null)))));
  const prompt = d.diff
    ? drEl("p", { class: "dr-prompt" }, d.diff.map(([op, text]) => drEl("span", { class: op === "insert" ? "dr-ins" : op === "delete" ? "dr-del" : "" }, text)))
    : drEl("p", { class: "dr-prompt" }, d.prompt || "");
  kids.push(section(d.diff ? "Prompt (changes from the previous iteration)" : "Prompt", prompt,
    d.diff_counts ? drEl("div", { class: "dr-muted" }, d.diff_counts) : null,
    d.rationale ? drEl("div", { class: "dr-muted" }, "Refiner: " + d.rationale) : null));
  if (d.meta) kids.push(section("Image", drEl("div", { class: "dr-muted" }, d.meta)));
  if (it.others && it.others.length)
    kids.push(section("Other reviewers", drEl("ul", { class: "dr-list" }, it.others.map(([name, stars, decision, note]) =>
      drEl("li", {}, drEl("strong", {}, name), " ", drStars(stars), " ", decision === "none" ? "" : decision, note ? drEl("div", { class: "dr-muted" }, note) : null)))));
  if (d.history && d.history.length)
    kids.push(section("History", drEl("ul", { class: "dr-list dr-small" }, d.history.map((h) => drEl("li", {}, h)))));
  return drEl("aside", { class: "dr-details", "data-testid": "drDetails" }, ...kids);
}

function reviewLoupe(view, it, redrawAll) {
  const img = drEl("img", { src: it.url, draggable: "false", alt: "" });
  const pane = drEl("div", { class: "dr-pane" }, img);
  const zoomLabel = drEl("span", { class: "dr-muted" }, "");
  const redraw = () => {
    drPlace(pane, img, view.z);
    const pct = Math.round(view.z.m * drFit(pane, img) * 100);
    zoomLabel.textContent = view.z.m <= 1 ? `fit (${pct} %)` : `${pct} %`;
  };
  const bar = drEl("div", { class: "dr-bar dr-no-pan" },
    drEl("strong", {}, `Iteration ${it.number}`), drEl("span", {}, it.label), zoomLabel,
    drEl("button", { class: "dr-btn", onclick: () => { view.z.m = 1; redraw(); } }, "Fit (Home)"),
    drEl("button", { class: "dr-btn", onclick: () => { drZoomAt(pane, img, view.z, drActual(pane, img), pane.clientWidth / 2, pane.clientHeight / 2); redraw(); } }, "100 % (+)"),
    drEl("button", { class: "dr-btn", onclick: () => { view.loupe = false; redrawAll(); } }, "Close (F / Esc)"));
  const box = drEl("div", { class: "dr-loupe", "data-testid": "drLoupe" }, pane, bar);
  drInteract(pane, () => img, view.z, redraw);
  img.addEventListener("load", redraw);
  if (img.complete) requestAnimationFrame(redraw);
  box.zoomKey = (name) => { if (drZoomKey(name, pane, img, view.z)) { redraw(); return true; } return false; };
  box.relayout = redraw;
  return box;
}

function reviewCompare(view, d, send) {
  const cmp = d.compare;
  const [a, b] = cmp.pair;
  const imgA = drEl("img", { src: a.url, draggable: "false", alt: "" });
  const imgB = drEl("img", { src: b.url, draggable: "false", alt: "" });
  const kind = view.cmpKind;
  const stage = drEl("div", { class: `dr-cmp-stage dr-cmp-${kind}` });
  let panes;
  if (kind === "side") {
    panes = [drEl("div", { class: "dr-pane" }, imgA), drEl("div", { class: "dr-pane" }, imgB)];
    stage.append(...panes);
  } else {
    const pane = drEl("div", { class: "dr-pane" }, drEl("div", { class: "dr-layer" }, imgA), drEl("div", { class: "dr-layer dr-layer-b" }, imgB));
    panes = [pane, pane];
    stage.append(pane);
  }
  const handle = drEl("div", { class: "dr-divider dr-no-pan", title: "drag to wipe between the two" });
  if (kind === "slider") panes[0].appendChild(handle);
  const redraw = () => {
    drPlace(panes[0], imgA, view.cz);
    drPlace(panes[1], imgB, view.cz);
    const layerB = panes[1].querySelector(".dr-layer-b");
    if (kind === "slider" && layerB) {
      const x = Math.round(panes[0].clientWidth * view.cmpPos);
      layerB.style.clipPath = `inset(0 0 0 ${x}px)`;
      layerB.style.opacity = "1";
      handle.style.left = `${x}px`;
    } else if (kind === "overlay" && layerB) {
      layerB.style.clipPath = "none";
      layerB.style.opacity = String(view.cmpOpacity);
    }
  };
  panes.forEach((p) => drInteract(p, () => imgA, view.cz, redraw));
  let dragging = false;
  handle.addEventListener("pointerdown", (e) => { dragging = true; handle.setPointerCapture(e.pointerId); e.stopPropagation(); });
  handle.addEventListener("pointermove", (e) => {
    if (!dragging) return;
    const r = panes[0].getBoundingClientRect();
    view.cmpPos = Math.min(1, Math.max(0, (e.clientX - r.left) / r.width));
    redraw();
  });
  handle.addEventListener("pointerup", () => { dragging = false; });
  [imgA, imgB].forEach((img) => img.addEventListener("load", redraw));

  const picker = (side, current) => drEl("select", {
    class: "dr-select dr-no-pan", "aria-label": side === 0 ? "Left image" : "Right image",
    onchange: (e) => { const ids = [a.id, b.id]; ids[side] = Number(e.target.value); send({ a: "compare", ids }); },
  }, cmp.candidates.map((c) => { const o = drEl("option", { value: c.id }, c.label); if (c.id === current.id) o.selected = true; return o; }));
  const kinds = [["slider", "Slider"], ["side", "Side by side"], ["overlay", "Overlay"]];
  const bar = drEl("div", { class: "dr-bar dr-no-pan" },
    drEl("strong", {}, "Compare"), picker(0, a), drEl("span", {}, "vs"), picker(1, b),
    kinds.map(([k, label]) => drEl("button", { class: k === kind ? "dr-btn dr-on" : "dr-btn", onclick: () => { view.cmpKind = k; send(null); } }, label)),
    kind === "overlay" ? drEl("input", { type: "range", min: 0, max: 100, value: Math.round(view.cmpOpacity * 100), class: "dr-no-pan", "aria-label": "Opacity of the right image",
      oninput: (e) => { view.cmpOpacity = Number(e.target.value) / 100; redraw(); } }) : null,
    drEl("button", { class: "dr-btn", onclick: () => { view.cz.m = 1; redraw(); } }, "Fit"),
    drEl("button", { class: "dr-btn", onclick: () => { send({ a: "close_compare" }); } }, "Close (C / Esc)"));
  const box = drEl("div", { class: "dr-loupe dr-compare", "data-testid": "drCompare" }, stage, bar);
  box.zoomKey = (name) => {
    if (name === "m") { const i = kinds.findIndex(([k]) => k === view.cmpKind); view.cmpKind = kinds[(i + 1) % kinds.length][0]; send(null); return true; }
    if (drZoomKey(name, panes[0], imgA, view.cz)) { redraw(); return true; }
    return false;
  };
  box.relayout = redraw;
  requestAnimationFrame(redraw);
  return box;
}

export default function (component) {
  const { data: d, parentElement } = component;
  const key = d.key;
  const view = reviewView(key);
  drAck(key, d.ack, component);
  if (view.item !== d.item) { view.z = { m: 1, u: 0.5, v: 0.5 }; view.details = view.details && true; }
  view.item = d.item;
  if (!(view.focusSeq > (d.ack || 0)) || view.focus === null) view.focus = d.focus;

  [...parentElement.children].filter((n) => n.classList && n.classList.contains("dr-desk")).forEach((n) => n.remove());
  const root = drEl("div", { class: "dr-desk", "data-testid": "drDesk", "data-item": d.item, tabindex: "-1" });
  parentElement.appendChild(root);

  const send = (action) => {
    if (action) drSend(component, key, action);
    render();
  };
  const focused = () => d.iterations.find((it) => it.number === view.focus) || d.iterations[0];

  function setFocus(n) {
    if (!d.iterations.some((it) => it.number === n)) return;
    view.focus = n;
    drSend(component, key, { a: "focus", v: n });
    view.focusSeq = DR.seqs[key];
    render();
  }

  function optimistic(action) {
    const it = focused();
    if (!it || !d.enabled) return;
    if (action.a === "stars") it.mine_stars = action.v;
    else if (action.a === "clear_stars") it.mine_stars = null;
    else if (action.a === "approve") it.mine_decision = "approved";
    else if (action.a === "reject") it.mine_decision = "rejected";
    else if (action.a === "clear_decision") it.mine_decision = "none";
  }

  function render() {
    root.replaceChildren();
    if (!d.iterations.length) {
      root.appendChild(drEl("div", { class: "dr-empty" }, "No iterations yet for this prompt."));
    } else {
      const row = drEl("div", { class: "dr-row" });
      const imgs = [];
      for (const it of d.iterations) {
        const isFocus = it.number === view.focus;
        let frame;
        if (it.url) {
          const img = reviewImg(view, it.url);
          imgs.push(img);
          frame = drEl("div", { class: "dr-frame", title: "click to focus · double-click for the loupe" }, img);
        } else {
          frame = drEl("div", { class: "dr-frame dr-missing" }, it.error || "no image");
        }
        const tools = drEl("div", { class: "dr-tools" },
          it.url ? drEl("button", { class: "dr-btn", title: "Loupe (F)", onclick: (e) => { e.stopPropagation(); setFocus(it.number); view.loupe = true; render(); } }, "⤢") : null,
          drEl("button", { class: "dr-btn", title: "Details: checks, criteria, prompt diff (I)", onclick: (e) => { e.stopPropagation(); setFocus(it.number); view.details = true; render(); } }, "i"),
          d.iterations.length > 1 || (d.candidates || []).length > 1
            ? drEl("button", { class: "dr-btn", title: "Compare (C)", onclick: (e) => { e.stopPropagation(); startCompare(it.number); } }, "⇆") : null);
        const cell = drEl("div", {
          class: isFocus ? "dr-cell dr-focus" : "dr-cell", "data-testid": "drIteration", "data-number": it.number, "data-id": it.id,
          "aria-current": isFocus ? "true" : null,
          onclick: () => setFocus(it.number),
          ondblclick: () => { if (it.url) { setFocus(it.number); view.loupe = true; render(); } },
        }, frame, tools, reviewCaption(it));
        row.appendChild(cell);
      }
      root.appendChild(row);
      reviewLayout(root, d);
      Promise.all(imgs.map((img) => img.decode().catch(() => {}))).then(() => {
        if (!root.isConnected) return;
        root.setAttribute("data-ready", String(d.item));
        DR.ready = { item: d.item, at: performance.now() };  // for bench/review.py: drawn, full-size images decoded
      });
    }
    if (view.details && d.iterations.length) root.appendChild(reviewDetails(focused()));
    root.overlay = null;
    if (d.compare && d.compare.pair) {
      root.overlay = reviewCompare(view, d, send);
    } else if (view.loupe && focused() && focused().url) {
      root.overlay = reviewLoupe(view, focused(), render);
    }
    if (root.overlay) root.appendChild(root.overlay);
    if (view.help) root.appendChild(drHelp(root, d.help, () => { view.help = false; render(); }));
  }

  function startCompare(number) {
    const ids = d.iterations.filter((it) => it.url).map((it) => it.id);
    const it = d.iterations.find((x) => x.number === number) || focused();
    if (!it || !it.url) return;
    const others = ids.filter((id) => id !== it.id);
    const cands = (d.candidates || []).map((c) => c.id).filter((id) => id !== it.id);
    const other = others.length ? others[0] : cands[0];
    if (other === undefined) return;
    // compare the focused iteration with the one before it (or after the first)
    const before = d.iterations.filter((x) => x.url && x.number < it.number).pop();
    send({ a: "compare", ids: before ? [before.id, it.id] : [it.id, other] });
  }

  const bindings = {
    ArrowLeft: { a: "prev" }, j: { a: "prev" }, ArrowRight: { a: "next" }, k: { a: "next" },
    1: { a: "stars", v: 1 }, 2: { a: "stars", v: 2 }, 3: { a: "stars", v: 3 }, 4: { a: "stars", v: 4 }, 5: { a: "stars", v: 5 },
    0: { a: "clear_stars" }, p: { a: "approve" }, x: { a: "reject" }, u: { a: "clear_decision" },
    z: { a: "undo" }, "Ctrl+z": { a: "undo" }, g: { a: "grid" }, a: { a: "auto" },
    v: { a: "variations" }, o: { a: "compare_parent" },
  };

  function onKey(e) {
    if (!root.isConnected) return;
    const name = drKeyName(e);
    if (drTyping(e)) {
      if (name === "Escape") { e.target.blur && e.target.blur(); const t = e.composedPath()[0]; t && t.blur && t.blur(); e.preventDefault(); }
      return;
    }
    if (drDialogOpen()) return;
    let handled = true;
    const overlay = root.overlay;
    if (name === "Escape") {
      if (view.help) view.help = false;
      else if (d.compare && d.compare.pair) drSend(component, key, { a: "close_compare" });
      else if (view.loupe) view.loupe = false;
      else if (view.details) view.details = false;
      else if (document.activeElement && document.activeElement !== document.body) document.activeElement.blur();
      else drSend(component, key, { a: "grid" });
      render();
    } else if (name === "?" || name === "Shift+?") {
      view.help = !view.help; render();
    } else if (overlay && overlay.zoomKey && overlay.zoomKey(name)) {
      // zoom keys inside the loupe / compare
    } else if (name === "Tab" || name === "Shift+Tab") {
      if (drControlFocused()) { handled = false; }  // Tab keeps moving between Streamlit's buttons once one has focus
      else {
        const nums = d.iterations.map((it) => it.number);
        const i = nums.indexOf(view.focus);
        setFocus(nums[(i + (name === "Tab" ? 1 : nums.length - 1)) % nums.length]);
      }
    } else if (/^(Alt|Shift)\+[1-9]$/.test(name)) {
      setFocus(Number(name.slice(-1)));
    } else if (name === "f" || name === "Space") {
      if (d.compare && d.compare.pair) { handled = true; }
      else { view.loupe = !view.loupe && !!(focused() && focused().url); render(); }
    } else if (name === "c") {
      if (d.compare && d.compare.pair) drSend(component, key, { a: "close_compare" }); else startCompare(view.focus);
      render();
    } else if (name === "i") {
      view.details = !view.details; render();
    } else if (name === "n") {
      const input = document.querySelector(`input[aria-label="${d.note_label}"], textarea[aria-label="${d.note_label}"]`);
      if (input && !input.disabled) { input.focus(); input.select && input.select(); } else handled = false;
    } else if (bindings[name]) {
      const action = bindings[name];
      optimistic(action);
      drSend(component, key, action);
      if (action.a === "next" || action.a === "prev") {  // the next prompt opens on its first iteration
        view.focus = 1;
        view.focusSeq = DR.seqs[key];
      }
      render();
    } else {
      handled = false;
    }
    if (handled) { e.preventDefault(); e.stopImmediatePropagation(); }
  }

  DR.handler = onKey;
  reviewPrefetch(view, d.prefetch);
  render();
  const onResize = () => { reviewLayout(root, d); if (root.overlay && root.overlay.relayout) root.overlay.relayout(); };
  if (DR.onResize) window.removeEventListener("resize", DR.onResize);
  DR.onResize = onResize;
  window.addEventListener("resize", onResize);
  requestAnimationFrame(onResize);
  return () => {
    if (DR.handler === onKey) DR.handler = null;
    drUnmount(key, component);
    window.removeEventListener("resize", onResize);
  };
}
