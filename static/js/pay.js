"use strict";
// Pay page: show the QR, then wait for the order to be paid or closed.
(function () {
  const root = document.getElementById("pay");
  const orderId = root.dataset.orderId;
  const money = root.dataset.money;
  const state = document.getElementById("state");
  const POLL_MS = 2000;
  let finished = false;

  function finish(status) {
    if (finished) return;
    if (status === "paid") {
      finished = true;
      location.replace("/paysuccess.html?money=" + encodeURIComponent(money));
    } else if (status === "closed") {
      finished = true;
      location.replace("/payfail.html");
    }
  }

  async function showQr() {
    const qr = document.getElementById("qr");
    try {
      const native = await paypush.call("GET", "/wxpay/createNative?orderId=" + encodeURIComponent(orderId));
      qr.innerHTML = native.qr_svg;
      qr.dataset.codeUrl = native.code_url;
      const link = document.getElementById("sim-link");
      if (link) {
        link.href = "/sandbox/wxpay/phone?code_url=" + encodeURIComponent(native.code_url);
        document.getElementById("sandbox-hint").hidden = false;
      }
      return native;
    } catch (e) {
      qr.innerHTML = "";
      const p = document.createElement("p");
      p.className = "error";
      p.textContent = e.message;
      qr.appendChild(p);
      return null;
    }
  }

  async function poll() {
    while (!finished) {
      try {
        const order = await paypush.call("GET", "/api/orders/" + encodeURIComponent(orderId));
        state.classList.remove("offline");
        finish(order.status);
      } catch (e) {
        state.classList.add("offline");
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  finish(root.dataset.status);
  if (!finished) showQr().then(poll);
})();
