"use strict";
// Pay page: show the QR, then wait until the order is paid or closed.
// The order's events are pushed over the server's WebSocket (default) or
// RabbitMQ Web STOMP (?push=stomp, or PUSH_ROUTE=stomp). Both routes go
// through one connection state machine with one reconnect backoff; while the
// route stays down, the page reads the order every few seconds instead.
(function () {
  const root = document.getElementById("pay");
  const stateText = document.getElementById("state");
  const orderId = root.dataset.orderId;

  // The reconnect rules. bench/page_rules.py applies the same to the
  // benchmarks' stand-in pages; tests/test_page_rules.py keeps the two in step.
  const POLL_MS = 2000;
  const POLL_AFTER_FAILURES = 2;
  const FIRST_RETRY_MS = 1000;
  const MAX_RETRY_MS = 15000;
  const RESTART_SPREAD_MS = 12000; // why this window: see retryDelay
  // The page socket's refusals (handlers/ws.py); any other close is retried.
  const CLOSE_LOGIN = 4401;
  const CLOSE_NOT_FOUND = 4404;
  // The server is leaving (a paypush process stopping closes every socket so):
  // no failure of the page's.
  const CLOSE_GOING_AWAY = 1001;

  // ---- Leaving the page ---------------------------------------------------

  let finished = false;

  function leave(url) {
    finished = true;
    stopPolling();
    stopConnecting();
    location.replace(url);
  }

  function finish(status) {
    if (finished) return;
    if (status === "paid") {
      stateText.textContent = "Paid. Redirecting…";
      leave("/paysuccess.html?money=" + encodeURIComponent(root.dataset.money));
    } else if (status === "closed") {
      leave("/payfail.html");
    } else if (status === "refunded") {
      finished = true;
      stopPolling();
      stopConnecting();
      stateText.textContent = "This order was paid and has been refunded in full.";
    }
  }

  function goToLogin() {
    location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
  }

  // ---- The order's state --------------------------------------------------

  function onEvent(event) {
    if (event && typeof event.status === "string" && event.order_id === orderId) finish(event.status);
  }

  async function readState() {
    try {
      finish((await paypush.call("GET", "/api/orders/" + encodeURIComponent(orderId))).status);
    } catch (e) {
      if (e.status === 401) goToLogin();
    }
  }

  // ---- Polling: while no route is connected ---------------------------------

  // The running loop, or null. Each loop checks it is still the current one
  // after every await, so stopping and restarting never leaves two running.
  let pollLoop = null;

  function startPolling() {
    if (pollLoop) return;
    const loop = { timer: 0 };
    pollLoop = loop;
    (async function tick() {
      await readState();
      if (pollLoop === loop) loop.timer = setTimeout(tick, POLL_MS);
    })();
  }

  function stopPolling() {
    if (pollLoop) clearTimeout(pollLoop.timer);
    pollLoop = null;
  }

  // ---- The connection's state machine ---------------------------------------
  //   connecting  the first attempt is under way
  //   live        a route is subscribed to the order's events
  //   retrying    the route was lost or refused; the next attempt waits out the backoff
  //   polling     POLL_AFTER_FAILURES attempts failed in a row (a close with 1001 is
  //               no failure): the order is read every POLL_MS while attempts go on
  //               with the same backoff
  // #pay's data-connection is the phase, or the route's name ("ws", "stomp") when live.

  const PHASE_TEXT = {
    connecting: "Connecting…",
    live: "Waiting for payment…",
    retrying: "Reconnecting…",
    polling: "Waiting for payment… (checking every few seconds)",
  };

  let route = null; // { name, open(callbacks) -> close() }
  let attempt = null; // the connection attempt whose callbacks count
  let failures = 0; // attempts failed in a row
  let retryTimer = 0;

  function enter(phase) {
    stateText.textContent = PHASE_TEXT[phase];
    stateText.classList.toggle("offline", phase !== "live");
    root.dataset.connection = phase === "live" ? route.name : phase;
  }

  // Each delay is uniformly random over its whole window (full jitter), so that
  // pages cut off together do not come back together.
  //
  // A close with 1001 is a planned stop: all the ~20k pages of that process
  // come back at once to the processes left, each socket costing a store read
  // and a binding (made one at a time per process, server/infra/routed_queue.py).
  // RESTART_SPREAD_MS = 12 s spreads them to ~1,700 opens/s in all (~420/s on
  // each of the four processes left of five) instead of the ~40k/s of a 0.5 s
  // window. All are still back well within the 60 s a restart is allowed, even
  // a page whose attempt then fails four times (12 + 1 + 2 + 4 + 8 s). The cost
  // is the shopper's: no polling meanwhile, so a payment made while the page
  // is away shows when it is back, at most 12 s later (6 s on average); 15 s
  // would cut the rate by a fifth for 3 s more of that wait.
  //
  // Any other loss (a refusal, a crash, the network): exponential from
  // FIRST_RETRY_MS, capped at MAX_RETRY_MS. The whole step rather than its
  // upper half: a crashed process's pages (no 1001) are also cut off together,
  // and the whole step halves the peak of their first retry.
  function retryDelay(failuresInARow, closedWith) {
    if (closedWith === CLOSE_GOING_AWAY) return Math.random() * RESTART_SPREAD_MS;
    return Math.random() * Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** (failuresInARow - 1));
  }

  function connect() {
    retryTimer = 0;
    const mine = {};
    attempt = mine;
    const current = (fn) => (arg) => { if (attempt === mine && !finished) fn(arg); };
    try {
      mine.close = route.open({ subscribed: current(connectionLive), received: current(onEvent),
                                lost: current(connectionLost) });
    } catch (e) {
      current(connectionLost)(null); // e.g. a malformed push URL: polling still works
    }
  }

  function connectionLive() {
    failures = 0;
    stopPolling();
    enter("live");
  }

  // closedWith: the socket's close code, or null when there is none.
  function connectionLost(closedWith) {
    attempt = null;
    // The server going away is no failure: the order's state is safe in the
    // store and the next socket's first message is that state. Counted, it
    // would set the stopped process's pages polling as soon as their first
    // attempt failed, while the processes left are busy taking them.
    if (closedWith !== CLOSE_GOING_AWAY) failures += 1;
    if (failures >= POLL_AFTER_FAILURES) {
      startPolling();
      enter("polling");
    } else {
      enter("retrying");
    }
    retryTimer = setTimeout(connect, retryDelay(failures, closedWith));
  }

  function stopConnecting() {
    clearTimeout(retryTimer);
    const closing = attempt;
    attempt = null;
    if (closing && closing.close) closing.close();
  }

  // ---- Routes ---------------------------------------------------------------
  // open(callbacks) starts one connection and returns its close(). It calls
  // subscribed() once the order's events are sure to arrive and its current
  // state has been read after that, received(event) for each event, and
  // lost(code) once, when the connection closes (its close code) or never
  // opens (null).

  // The server names the socket's path and query (push.ws); the origin is the
  // page's own. push.ws is built from PUBLIC_URL, the address WeChat's notifies
  // reach, which need not be the name the shopper's browser used: the login
  // cookie goes only to the page's own host, and the server accepts a socket
  // whose Origin is its Host. Behind a proxy on the public origin the two agree.
  function pageSocketUrl(pushWs) {
    const given = new URL(pushWs, location.href);
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + given.pathname + given.search;
  }

  function parseJson(text) {
    try { return JSON.parse(text); } catch (e) { return null; }
  }

  function webSocketRoute(pushWs) {
    return {
      name: "ws",
      open({ subscribed, received, lost }) {
        const ws = new WebSocket(pageSocketUrl(pushWs));
        let first = true;
        ws.onmessage = (m) => {
          // The server subscribes, then sends the order's state: the first
          // message, not the upgrade, is what makes the socket live (a refusal
          // such as 4429 comes after the upgrade).
          if (first) { first = false; subscribed(); }
          received(parseJson(m.data));
        };
        ws.onclose = (ev) => {
          if (ev.code === CLOSE_NOT_FOUND) { leave("/payfail.html"); return; }
          if (ev.code === CLOSE_LOGIN) readState(); // goes to the login page if the session ended
          lost(ev.code);
        };
        return () => ws.close(1000);
      },
    };
  }

  // The STOMP client is loaded only for this route: a script from this site,
  // which the CSP's script-src 'self' allows. A failed load fails the attempt
  // and is tried again with the next one.
  let stompLibrary = null;

  function loadStompLibrary() {
    if (!stompLibrary) {
      stompLibrary = new Promise((resolve, reject) => {
        const script = document.createElement("script");
        script.src = root.dataset.stompBundle;
        script.onload = () => (window.StompJs ? resolve(window.StompJs) : reject(new Error("no StompJs")));
        script.onerror = () => { script.remove(); reject(new Error("STOMP client not loaded")); };
        document.head.appendChild(script);
      });
      stompLibrary.catch(() => { stompLibrary = null; });
    }
    return stompLibrary;
  }

  let receipts = 0;

  function stompRoute(stomp) {
    return {
      name: "stomp",
      open({ subscribed, received, lost }) {
        let client = null;
        let closed = false;
        loadStompLibrary().then((StompJs) => {
          if (closed) return;
          client = new StompJs.Client({
            brokerURL: stomp.url,
            // host: the RabbitMQ vhost paypush publishes to (Web STOMP's default is "/").
            connectHeaders: { host: stomp.host, login: stomp.login, passcode: stomp.passcode },
            heartbeatIncoming: 10000,
            heartbeatOutgoing: 10000,
            reconnectDelay: 0, // the page's backoff decides, as on the WebSocket route
          });
          client.onConnect = () => {
            // Read the state only once the broker confirms the subscription:
            // then no event can fall between the two.
            const receipt = "subscribed-" + (receipts += 1);
            client.watchForReceipt(receipt, () => { subscribed(); readState(); });
            client.subscribe(stomp.destination, (m) => received(parseJson(m.body)), { receipt });
          };
          client.onWebSocketClose = (ev) => { client.deactivate(); lost(ev.code); };
          client.activate();
        }, () => { if (!closed) lost(null); });
        return () => { closed = true; if (client) client.deactivate(); };
      },
    };
  }

  // The route asked for (?push=, else the server's PUSH_ROUTE) if createNative
  // offers it; it offers no STOMP credentials when that route is not set up.
  function chooseRoute(push) {
    const wanted = new URLSearchParams(location.search).get("push") || root.dataset.pushRoute;
    return wanted === "stomp" && push.stomp ? stompRoute(push.stomp) : webSocketRoute(push.ws);
  }

  // ---- The QR ---------------------------------------------------------------

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
  enter("connecting");
  showQr().then((native) => {
    if (finished) return;
    if (native) {
      route = chooseRoute(native.push);
      connect();
    } else {
      // No push routes without createNative's answer: reading the order is all there is.
      startPolling();
      enter("polling");
    }
  });
})();
