// The console's only script: live regions that refresh themselves, "tick all", and confirmations.
// Plain JS, no library: each element with data-live="<url>" is fetched again every
// data-every-ms milliseconds (at least 1000) and its content replaced; with data-stop-when,
// polling stops once the fetched content holds an element with data-state equal to it.
"use strict";
(function () {
  var submitting = false;
  function poll(region) {
    var every = Math.max(1000, parseInt(region.getAttribute("data-every-ms") || "2000", 10));
    var stopWhen = region.getAttribute("data-stop-when");
    function tick() {
      fetch(region.getAttribute("data-live"), { credentials: "same-origin", headers: { "X-Console-Live": "1" } })
        .then(function (resp) {
          if (resp.redirected || !resp.ok) { throw new Error("status " + resp.status); }
          return resp.text();
        })
        .then(function (html) {
          // NOTE: a form being sent must stay in the page, or the browser drops its submission.
          if (submitting) { return; }
          region.innerHTML = html;
          if (stopWhen && region.querySelector('[data-state="' + stopWhen + '"]')) { return; }
          setTimeout(tick, every);
        })
        .catch(function () { setTimeout(tick, every * 2); });
    }
    if (stopWhen && region.querySelector('[data-state="' + stopWhen + '"]')) { return; }
    setTimeout(tick, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(poll);
    document.querySelectorAll("[data-check-all]").forEach(function (box) {
      box.addEventListener("change", function () {
        var name = box.getAttribute("data-check-all");
        box.form.querySelectorAll('input[type=checkbox][name="' + name + '"]').forEach(function (other) {
          other.checked = box.checked;
        });
      });
    });
  });
  // Forms marked data-confirm ask first (delegated: live regions replace their forms).
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); return; }
    submitting = true;
  });
})();
