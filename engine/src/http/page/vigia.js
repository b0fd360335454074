// Vigia's status page follows the engine: an event that changes what the page shows
// (a status change, a silence, a reload) fetches the page again and swaps its content.
// Without the event stream it reloads every `refresh` seconds.
(function () {
  "use strict";
  var refresh = (parseInt(document.body.dataset.refresh, 10) || 30) * 1000;
  var pending = null;
  function swap() {
    pending = null;
    fetch(location.href, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var next = doc.getElementById("main");
        var open = {};
        document.querySelectorAll("details[open] > summary").forEach(function (s) { open[s.textContent] = true; });
        if (next) {
          document.getElementById("main").replaceWith(next);
          document.title = doc.title;
          next.querySelectorAll("details > summary").forEach(function (s) {
            if (open[s.textContent]) { s.parentNode.open = true; }
          });
          live(!!source && source.readyState === 1);
        }
      })
      .catch(function () { /* the next event or tick tries again */ });
  }
  function soon() { if (!pending) { pending = setTimeout(swap, 500); } }
  function live(on) { var l = document.getElementById("live"); if (l) { l.classList.toggle("on", on); } }
  var source = null;
  var timer = setInterval(swap, refresh);
  if (window.EventSource) {
    source = new EventSource("/api/v1/events");
    source.onopen = function () { live(true); clearInterval(timer); timer = setInterval(swap, Math.max(refresh, 60000)); };
    source.onerror = function () { live(false); };
    ["alert", "alert_silenced", "silence_added", "silence_removed", "ack", "reloaded", "delivered", "delivery_failed"].forEach(function (k) {
      source.addEventListener(k, soon);
    });
  }
})();
