"use strict";
(function () {
  const form = document.getElementById("order-form");
  const total = document.getElementById("total");
  const button = document.getElementById("place-order");
  const error = document.getElementById("order-error");
  const inputs = Array.from(document.querySelectorAll("input.qty"));

  function items() {
    return inputs
      .map((i) => ({ sku_id: i.name, num: parseInt(i.value, 10) || 0, price: +i.dataset.price }))
      .filter((i) => i.num > 0);
  }
  function refresh() {
    const chosen = items();
    total.textContent = "¥" + paypush.yuan(chosen.reduce((s, i) => s + i.num * i.price, 0));
    button.disabled = chosen.length === 0;
  }
  inputs.forEach((i) => i.addEventListener("input", refresh));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    button.disabled = true;
    error.hidden = true;
    try {
      const order = await paypush.call("POST", "/api/orders", {
        items: items().map(({ sku_id, num }) => ({ sku_id, num })),
      });
      location.href = "/weixinpay.html?orderId=" + encodeURIComponent(order.id);
    } catch (e) {
      if (e.status === 401) { location.href = "/login?next=/"; return; }
      error.textContent = e.message;
      error.hidden = false;
      button.disabled = false;
    }
  });
  refresh();
})();
