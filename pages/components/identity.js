// Keeps the reviewer's name in a cookie, so a reload or a new tab knows who is reviewing.
// Python reads it back with st.context.cookies; this reports whether the browser kept it, so a
// refused cookie is said on screen instead of the name being lost silently at the next reload.

function readCookie(name) {
  for (const part of document.cookie.split(";")) {
    const [k, ...rest] = part.trim().split("=");
    if (k === name) return decodeURIComponent(rest.join("="));
  }
  return null;
}

export default function (component) {
  const { data: d } = component;
  if (d.name && readCookie(d.cookie) !== d.name) {
    document.cookie = `${d.cookie}=${encodeURIComponent(d.name)}; Path=/; Max-Age=${d.max_age}; SameSite=Lax`;
  } else if (d.forget) {
    document.cookie = `${d.cookie}=; Path=/; Max-Age=0; SameSite=Lax`;
  }
  // Report what the browser kept when Python does not know it yet: always after writing a name
  // (was it refused?), otherwise only a cookie Python has not seen. Nothing written and nothing
  // kept needs no report, and so no rerun (a first visit draws its page once, not twice).
  const kept = readCookie(d.cookie) || "";
  const known = d.reported ?? (d.name ? null : "");
  if (kept !== known) component.setStateValue("kept", kept);
}
