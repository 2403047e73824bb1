"use strict";
// Pay page: show the QR, then wait for the order to be paid or closed.
// Push over the server's WebSocket (default) or RabbitMQ Web STOMP (?push=stomp),
// reconnecting with backoff; polling takes over while neither is connected.
(function () {
  const root = document.getElementById("pay");
  const orderId = root.dataset.orderId;
  const money = root.dataset.money;
  const state = document.getElementById("state");
  let route = new URLSearchParams(location.search).get("push") || root.dataset.pushRoute || "ws";
  const POLL_MS = 2000;
  const POLL_AFTER_FAILURES = 2;
  let finished = false;
  let failures = 0;
  let polling = false;

  function show(text, live) {
    state.textContent = text;
    state.classList.toggle("offline", !live);
    root.dataset.connection = live ? route : polling ? "polling" : "connecting";
  }

  function finish(status) {
    if (finished) return;
    if (status === "paid") {
      finished = true;
      show("Paid. Redirecting…", true);
      location.replace("/paysuccess.html?money=" + encodeURIComponent(money));
    } else if (status === "closed") {
      finished = true;
      location.replace("/payfail.html");
    }
  }

  function onEvent(event) {
    if (event && typeof event.status === "string" && event.order_id === orderId) finish(event.status);
  }

  async function readState() {
    try {
      const order = await paypush.call("GET", "/api/orders/" + encodeURIComponent(orderId));
      finish(order.status);
      return true;
    } catch (e) {
      if (e.status === 401) location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      return false;
    }
  }

  async function poll() {
    if (polling) return;
    polling = true;
    while (!finished && polling) {
      await readState();
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  function failed() {
    failures += 1;
    if (failures >= POLL_AFTER_FAILURES) poll();
    show(polling ? "Waiting for payment… (checking every few seconds)" : "Reconnecting…", false);
    return Math.min(15000, 500 * 2 ** failures) * (0.75 + Math.random() / 2);
  }

  function connected() {
    failures = 0;
    polling = false;
    show("Waiting for payment…", true);
  }

  function connectWs() {
    if (finished) return;
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host +
      "/ws/pay?orderId=" + encodeURIComponent(orderId);
    const ws = new WebSocket(url);
    ws.onopen = connected;
    ws.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { /* not ours */ } };
    ws.onclose = (ev) => {
      if (finished) return;
      if (ev.code === 4401) { readState(); return; }
      if (ev.code === 4404) { location.replace("/payfail.html"); return; }
      setTimeout(connectWs, failed());
    };
  }

  function connectStomp(stomp) {
    const client = new StompJs.Client({
      brokerURL: stomp.url,
      // host: the RabbitMQ vhost paypush publishes to (Web STOMP's default is "/").
      connectHeaders: { host: stomp.host, login: stomp.login, passcode: stomp.passcode },
      heartbeatIncoming: 10000,
      heartbeatOutgoing: 10000,
      reconnectDelay: 1000,
      maxReconnectDelay: 15000,
      reconnectTimeMode: StompJs.ReconnectionTimeMode.EXPONENTIAL,
    });
    client.onConnect = () => {
      client.subscribe(stomp.destination, (m) => { try { onEvent(JSON.parse(m.body)); } catch (e) { /* not ours */ } });
      connected();
      readState(); // subscribed first, then read: nothing falls in between
    };
    client.onWebSocketClose = () => { if (!finished) failed(); };
    client.onStompError = () => { if (!finished) failed(); };
    client.activate();
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
      qr.textContent = "";
      const p = document.createElement("p");
      p.className = "error";
      p.textContent = e.message;
      qr.appendChild(p);
      if (e.status === 409) readState();
      return null;
    }
  }

  finish(root.dataset.status);
  if (finished) return;
  show("Connecting…", false);
  showQr().then((native) => {
    if (finished) return;
    // No STOMP offered (no STOMP_PASSCODE on this server): the WebSocket route it always has.
    if (route === "stomp" && native && !native.push.stomp) route = "ws";
    if (route === "stomp" && native && window.StompJs) connectStomp(native.push.stomp);
    else if (route === "stomp") poll();
    else connectWs();
  });
})();
