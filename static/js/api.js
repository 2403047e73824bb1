// Shared by the pages: JSON calls with the XSRF token Tornado expects.
"use strict";
window.paypush = {
  xsrf() {
    const meta = document.querySelector('meta[name="xsrf-token"]');
    return meta ? meta.content : "";
  },
  async call(method, url, body, headers) {
    const init = { method, headers: { "Accept": "application/json", ...(headers || {}) }, credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.headers["X-XSRFToken"] = this.xsrf();
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(url, init);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const err = new Error((data && data.error) || `HTTP ${resp.status}`);
      err.status = resp.status;
      throw err;
    }
    return data;
  },
  yuan(fen) { return (fen / 100).toFixed(2); },
};
