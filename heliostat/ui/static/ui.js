// heliostat UI: pan/zoom of the DAG and live refresh of a running workflow. Plain JS,
// no build step; the pages work without it (except the live refresh).
(function () {
  "use strict";
  var view = null; // the DAG's viewBox, kept across refreshes

  function panzoom(wrap) {
    var svg = wrap.querySelector("svg");
    if (!svg) return;
    var vb = svg.viewBox.baseVal;
    var full = { x: vb.x, y: vb.y, w: vb.width, h: vb.height };
    if (view) { vb.x = view.x; vb.y = view.y; vb.width = view.w; vb.height = view.h; }
    else {
      // start readable: at most ~1.3 px per unit wide, anchored at the left
      var rect = wrap.getBoundingClientRect();
      var scale = Math.max(full.w / rect.width, full.h / rect.height, 1 / 1.3);
      if (scale > 2.5) scale = 2.5;
      vb.width = rect.width * scale; vb.height = rect.height * scale;
      vb.x = full.w < vb.width ? (full.w - vb.width) / 2 : 0; vb.y = (full.h - vb.height) / 2;
    }
    svg.removeAttribute("width"); svg.removeAttribute("height");
    var save = function () { view = { x: vb.x, y: vb.y, w: vb.width, h: vb.height }; };
    save();
    wrap.addEventListener("wheel", function (e) {
      e.preventDefault();
      var r = svg.getBoundingClientRect();
      var f = e.deltaY > 0 ? 1.15 : 1 / 1.15;
      var px = vb.x + (e.clientX - r.left) / r.width * vb.width;
      var py = vb.y + (e.clientY - r.top) / r.height * vb.height;
      vb.width *= f; vb.height *= f;
      vb.x = px - (px - vb.x) * f; vb.y = py - (py - vb.y) * f;
      save();
    }, { passive: false });
    var drag = null;
    wrap.addEventListener("mousedown", function (e) {
      drag = { x: e.clientX, y: e.clientY, vx: vb.x, vy: vb.y, moved: false };
      wrap.classList.add("dragging");
    });
    window.addEventListener("mousemove", function (e) {
      if (!drag) return;
      var r = svg.getBoundingClientRect();
      var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      vb.x = drag.vx - dx / r.width * vb.width; vb.y = drag.vy - dy / r.height * vb.height;
      save();
    });
    window.addEventListener("mouseup", function () { wrap.classList.remove("dragging"); setTimeout(function () { drag = null; }, 0); });
    wrap.addEventListener("click", function (e) { if (drag && drag.moved) e.preventDefault(); }, true);
  }

  function init(root) {
    var wraps = root.querySelectorAll("[data-panzoom]");
    for (var i = 0; i < wraps.length; i++) panzoom(wraps[i]);
  }

  var TERMINAL = { SUCCESSFUL: 1, FAILED: 1, CANCELED: 1, RESUMABLE: 1, NEEDS_ATTENTION: 1 };

  function live() {
    var box = document.getElementById("live");
    if (!box) return;
    var watch = /[?&]watch=1/.test(location.search);
    var initial = box.getAttribute("data-status");
    var sawActive = box.getAttribute("data-active") === "1";
    var started = Date.now();
    function keepGoing(status) {
      if (!TERMINAL[status]) { sawActive = true; return true; }
      if (!watch) return false;
      if (sawActive || status !== initial) return false;
      return Date.now() - started < 120000; // an action was just taken: wait for it
    }
    if (!keepGoing(initial)) return;
    function poll() {
      fetch(box.getAttribute("data-live-url"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          box.innerHTML = html;
          init(box);
          var badge = box.querySelector(".head-row .badge");
          var status = badge ? badge.className.replace(/.*st-(\w+).*/, "$1") : initial;
          box.setAttribute("data-status", status);
          if (keepGoing(status)) setTimeout(poll, 1200);
        })
        .catch(function () { setTimeout(poll, 3000); });
    }
    setTimeout(poll, 1200);
  }

  // "Load earlier" on a step's log: fetch the page before the one shown and put it on
  // top, in place (without JavaScript the link opens that page instead).
  function earlierLogs() {
    var links = document.querySelectorAll("a.log-earlier");
    for (var i = 0; i < links.length; i++) links[i].addEventListener("click", function (e) {
      var a = e.currentTarget;
      var offset = parseInt(a.getAttribute("data-offset"), 10);
      var limit = parseInt(a.getAttribute("data-limit"), 10);
      var from = Math.max(offset - limit, 0);
      var head = a.closest(".log-head");
      var pre = head.nextElementSibling;
      e.preventDefault();
      fetch(a.getAttribute("data-api") + "&offset=" + from + "&limit=" + (offset - from),
            { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (page) {
          pre.textContent = page.text + pre.textContent;
          a.setAttribute("data-offset", String(page.offset));
          var range = head.querySelector(".log-range");
          if (range) range.textContent = range.textContent.replace(/characters \d+/, "characters " + page.offset);
          if (!page.more_before) a.parentNode.removeChild(a);
        })
        .catch(function () { location.href = a.href; });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { init(document); live(); earlierLogs(); });
})();
