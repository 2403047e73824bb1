// Operator console: the order list (filter, search, pages), one order's
// timeline and refunds, and the refund form. Refunds still processing are
// looked at again every two seconds until WeChat's answer is in. The catalog:
// every SKU's stock and price, and a form to create or change one.
"use strict";
(() => {
  const api = window.paypush;
  const $ = (id) => document.getElementById(id);
  const rows = $("orders").querySelector("tbody");
  let cursor = null;
  let current = null;
  let refreshTimer = null;

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function showError(el, err) {
    el.textContent = err.message;
    el.hidden = false;
  }

  async function loadOrders(append) {
    const params = new URLSearchParams();
    if ($("status").value) params.set("status", $("status").value);
    if ($("q").value.trim()) params.set("q", $("q").value.trim());
    if (append && cursor) params.set("cursor", cursor);
    $("list-error").hidden = true;
    try {
      const page = await api.call("GET", "/api/admin/orders?" + params);
      if (!append) rows.textContent = "";
      for (const o of page.orders) {
        const tr = document.createElement("tr");
        tr.dataset.orderId = o.id;
        const link = document.createElement("a");
        link.href = "#" + o.id;
        link.textContent = o.id;
        link.addEventListener("click", (e) => { e.preventDefault(); openOrder(o.id); });
        cell(tr, "").appendChild(link);
        cell(tr, o.user);
        cell(tr, o.status, "status");
        cell(tr, api.yuan(o.pay_money), "num");
        cell(tr, api.yuan(o.refunded), "num");
        cell(tr, o.created_at);
        rows.appendChild(tr);
      }
      cursor = page.next_cursor;
      $("more").hidden = !cursor;
    } catch (err) {
      showError($("list-error"), err);
    }
  }

  function renderOrder(o) {
    $("detail").hidden = false;
    $("d-id").textContent = o.id;
    $("d-status").textContent = o.status;
    $("d-paid").textContent = api.yuan(o.pay_money);
    $("d-refunded").textContent = api.yuan(o.refunded);
    $("d-txn").textContent = o.transaction_id || "-";
    $("d-user").textContent = o.user || "";
    const refunds = $("d-refunds").querySelector("tbody");
    refunds.textContent = "";
    for (const r of o.refunds) {
      const tr = document.createElement("tr");
      tr.dataset.refundNo = r.out_refund_no;
      cell(tr, r.out_refund_no);
      cell(tr, api.yuan(r.amount), "num");
      cell(tr, r.status, "refund-status");
      cell(tr, r.transaction_id ? `${r.reason} (${r.transaction_id})` : r.reason);
      cell(tr, r.created_at);
      cell(tr, r.success_time || "");
      refunds.appendChild(tr);
    }
    const timeline = $("d-timeline");
    timeline.textContent = "";
    const entries = o.logs.map((e) => [e.at, `${e.kind} (${e.who})${e.remarks ? ": " + e.remarks : ""}`])
      .concat((o.pushes || []).map((p) => [p.at, `pushed "${p.event}" to the shopper's page`]))
      .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    for (const [at, text] of entries) {
      const li = document.createElement("li");
      li.textContent = `${at} ${text}`;
      timeline.appendChild(li);
    }
    $("refund-form").hidden = !(o.status === "paid");
    clearTimeout(refreshTimer);
    if (o.refunds.some((r) => r.status === "processing")) {
      refreshTimer = setTimeout(() => openOrder(o.id), 2000);
    }
  }

  async function openOrder(id) {
    if (current !== id) $("refund-message").hidden = true;
    current = id;
    try {
      renderOrder(await api.call("GET", "/api/orders/" + encodeURIComponent(id)));
    } catch (err) {
      showError($("list-error"), err);
    }
  }

  function toFen(text) {
    const m = /^(\d{1,9})(?:\.(\d{1,2}))?$/.exec(text.trim());
    if (!m) return null;
    return Number(m[1]) * 100 + Number((m[2] || "0").padEnd(2, "0"));
  }

  $("refund-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const msg = $("refund-message");
    const amount = toFen($("refund-amount").value);
    if (!amount) {
      msg.textContent = "Amount: yuan, up to two decimals, more than zero.";
      msg.hidden = false;
      return;
    }
    // One key per submitted form: a double click or a retried request makes one refund.
    const key = crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random();
    $("refund-submit").disabled = true;
    try {
      const r = await api.call("POST", `/api/orders/${encodeURIComponent(current)}/refunds`,
        { amount, reason: $("refund-reason").value }, { "Idempotency-Key": key });
      msg.textContent = `Refund ${r.out_refund_no} of ¥${api.yuan(r.amount)}: ${r.status}`;
      $("refund-amount").value = "";
      $("refund-reason").value = "";
    } catch (err) {
      msg.textContent = "Refund refused: " + err.message;
    } finally {
      msg.hidden = false;
      $("refund-submit").disabled = false;
    }
    openOrder(current);
  });

  async function loadReports() {
    try {
      const { reports } = await api.call("GET", "/api/admin/reconciliations");
      const body = $("reports").querySelector("tbody");
      body.textContent = "";
      for (const r of reports) {
        const tr = document.createElement("tr");
        tr.dataset.date = r.date;
        cell(tr, r.date);
        cell(tr, r.agrees ? "agrees" : "differences", "outcome");
        cell(tr, api.yuan(r.wechat.paid), "num");
        cell(tr, api.yuan(r.ours.paid), "num");
        cell(tr, r.fixed.length + (r.fixed_earlier || []).length, "num");
        cell(tr, r.mismatches.map((m) => `${m.kind} ${m.out_trade_no} ${m.out_refund_no}: ${m.detail}`).join("; "));
        body.appendChild(tr);
      }
    } catch (err) {
      showError($("list-error"), err);
    }
  }

  function describeChange(c) {
    const a = c.after;
    if (c.created) return `${c.sku_id} created: ${a.stock} on hand, ¥${api.yuan(a.price)}, ${a.name}`;
    const parts = [];
    if (c.before.stock !== a.stock) parts.push(`on hand ${c.before.stock} → ${a.stock}`);
    if (c.before.price !== a.price) parts.push(`price ¥${api.yuan(c.before.price)} → ¥${api.yuan(a.price)}`);
    if (c.before.name !== a.name) parts.push(`name ${c.before.name} → ${a.name}`);
    return `${c.sku_id}: ${parts.join(", ") || "unchanged"}`;
  }

  async function loadSkus() {
    try {
      const { skus, changes } = await api.call("GET", "/api/admin/skus");
      const body = $("skus").querySelector("tbody");
      body.textContent = "";
      for (const s of skus) {
        const tr = document.createElement("tr");
        tr.dataset.skuId = s.id;
        cell(tr, s.id);
        cell(tr, s.name, "name");
        cell(tr, api.yuan(s.price), "num price");
        cell(tr, s.stock, "num stock");
        const edit = document.createElement("button");
        edit.type = "button";
        edit.className = "edit";
        edit.textContent = "Edit";
        edit.addEventListener("click", () => {
          $("sku-id").value = s.id;
          $("sku-stock").value = String(s.stock);
          $("sku-name").value = s.name;
          $("sku-price").value = api.yuan(s.price);
          $("sku-stock").focus();
        });
        cell(tr, "").appendChild(edit);
        body.appendChild(tr);
      }
      const list = $("sku-changes");
      list.textContent = "";
      for (const c of changes) {
        const li = document.createElement("li");
        li.textContent = `${new Date(c.at * 1000).toISOString()} ${describeChange(c)} (${c.by})`;
        list.appendChild(li);
      }
    } catch (err) {
      showError($("list-error"), err);
    }
  }

  $("sku-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const msg = $("sku-message");
    const body = {};
    const stock = $("sku-stock").value.trim();
    const name = $("sku-name").value.trim();
    const price = $("sku-price").value.trim();
    if (stock) {
      if (!/^\d{1,8}$/.test(stock)) { msg.textContent = "On hand: a whole number."; msg.hidden = false; return; }
      body.stock = Number(stock);
    }
    if (name) body.name = name;
    if (price) {
      const fen = toFen(price);
      if (!fen) { msg.textContent = "Price: yuan, up to two decimals, more than zero."; msg.hidden = false; return; }
      body.price = fen;
    }
    $("sku-save").disabled = true;
    try {
      const id = $("sku-id").value.trim();
      const c = await api.call("PUT", "/api/admin/skus/" + encodeURIComponent(id), body);
      msg.textContent = "Saved: " + describeChange(c);
    } catch (err) {
      msg.textContent = "Not saved: " + err.message;
    } finally {
      msg.hidden = false;
      $("sku-save").disabled = false;
    }
    loadSkus();
  });

  $("filter").addEventListener("submit", (e) => { e.preventDefault(); cursor = null; loadOrders(false); });
  $("more").addEventListener("click", () => loadOrders(true));
  loadOrders(false);
  loadReports();
  loadSkus();
  if (location.hash.length > 1) openOrder(decodeURIComponent(location.hash.slice(1)));
})();
