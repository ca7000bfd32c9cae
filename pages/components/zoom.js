// A zoomable, pannable view of one or more images that share one zoom (the loupe and compare).
//
// The shared state is {m, u, v}: m = zoom as a multiple of "fit to the pane" (1 = fit), (u, v) =
// the point of the image at the pane's centre, as fractions of its width and height. Every image
// is drawn from the same state, so two images of different sizes stay aligned while zooming.

const DR_MAX_ZOOM = 8;  // 800 % of the natural size at most

function drFit(pane, img) {
  const w = img.naturalWidth || 1, h = img.naturalHeight || 1;
  return Math.min(pane.clientWidth / w, pane.clientHeight / h);
}

/** Draw `img` inside `pane` from the shared state `z`. */
function drPlace(pane, img, z) {
  const w = img.naturalWidth, h = img.naturalHeight;
  if (!w || !h) return;
  const fit = drFit(pane, img), s = z.m * fit;
  if (z.m <= 1.0001) { z.m = 1; z.u = 0.5; z.v = 0.5; }
  const tx = pane.clientWidth / 2 - z.u * w * s, ty = pane.clientHeight / 2 - z.v * h * s;
  img.style.width = `${w}px`;
  img.style.height = `${h}px`;
  img.style.transform = `translate(${tx}px, ${ty}px) scale(${s})`;
}

/** The zoom multiple at which `img` shows at 100 % (one image pixel per screen pixel). */
function drActual(pane, img) {
  const fit = drFit(pane, img);
  return fit > 0 ? Math.max(1, 1 / fit) : 1;
}

/** Zoom to multiple `m`, keeping the image point under (px, py) (pane coordinates) where it is. */
function drZoomAt(pane, img, z, m, px, py) {
  const w = img.naturalWidth || 1, h = img.naturalHeight || 1, fit = drFit(pane, img);
  const limit = Math.max(1, DR_MAX_ZOOM / fit);
  m = Math.min(limit, Math.max(1, m));
  const s0 = z.m * fit, s1 = m * fit;
  const pu = z.u + (px - pane.clientWidth / 2) / (w * s0), pv = z.v + (py - pane.clientHeight / 2) / (h * s0);
  z.u = pu - (px - pane.clientWidth / 2) / (w * s1);
  z.v = pv - (py - pane.clientHeight / 2) / (h * s1);
  z.m = m;
}

/**
 * Make `pane` interactive: drag pans, a click toggles fit / 100 % at the pointer, the wheel zooms.
 * `ref()` returns the image whose size defines the step (the first one), `redraw()` draws them all.
 */
function drInteract(pane, ref, z, redraw) {
  let down = null;
  pane.addEventListener("pointerdown", (e) => {
    if (e.button !== 0 || e.target.closest(".dr-no-pan")) return;
    down = { x: e.clientX, y: e.clientY, u: z.u, v: z.v, moved: false };
    pane.setPointerCapture(e.pointerId);
  });
  pane.addEventListener("pointermove", (e) => {
    if (!down) return;
    const dx = e.clientX - down.x, dy = e.clientY - down.y;
    if (Math.abs(dx) + Math.abs(dy) > 4) down.moved = true;
    if (!down.moved || z.m <= 1) return;
    const img = ref(), s = z.m * drFit(pane, img);
    z.u = down.u - dx / (img.naturalWidth * s);
    z.v = down.v - dy / (img.naturalHeight * s);
    redraw();
  });
  pane.addEventListener("pointerup", (e) => {
    if (!down) return;
    const wasClick = !down.moved;
    down = null;
    if (!wasClick) return;
    const r = pane.getBoundingClientRect(), img = ref();
    drZoomAt(pane, img, z, z.m > 1 ? 1 : drActual(pane, img), e.clientX - r.left, e.clientY - r.top);
    redraw();
  });
  pane.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = pane.getBoundingClientRect(), img = ref();
    drZoomAt(pane, img, z, z.m * Math.exp(-e.deltaY / 400), e.clientX - r.left, e.clientY - r.top);
    redraw();
  }, { passive: false });
}

/** Keyboard zoom shared by the loupe and compare: + / = in, - out, Home fit. True when handled. */
function drZoomKey(name, pane, img, z) {
  const cx = pane.clientWidth / 2, cy = pane.clientHeight / 2;
  if (name === "+" || name === "=") {
    const actual = drActual(pane, img);
    drZoomAt(pane, img, z, z.m < actual - 0.001 ? actual : z.m * 2, cx, cy);
  } else if (name === "-") {
    const actual = drActual(pane, img);
    drZoomAt(pane, img, z, z.m > actual + 0.001 ? Math.max(actual, z.m / 2) : 1, cx, cy);
  } else if (name === "Home") {
    z.m = 1;
  } else {
    return false;
  }
  return true;
}
