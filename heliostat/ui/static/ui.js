// heliostat UI: pan/zoom of the DAG and live refresh of a running workflow. Plain JS,
// no build step; the pages work without it (except the live refresh).
(function () {
  "use strict";
  var view = null; // the DAG's viewBox, kept across refreshes

  // Pan and zoom move the drawn SVG with a CSS transform (the compositor moves the
  // picture; nothing is laid out again), and the viewBox is changed once the gesture
  // ends, so even a graph of every step of a big run follows the mouse.
  function panzoom(wrap) {
    var svg = wrap.querySelector("svg");
    if (!svg) return;
    var vb = svg.viewBox.baseVal;
    var full = { x: vb.x, y: vb.y, w: vb.width, h: vb.height };
    var rect = wrap.getBoundingClientRect();
    function fit(cap) {
      var scale = Math.max(full.w / rect.width, full.h / rect.height, 1 / 1.3);
      if (cap && scale > cap) scale = cap;
      vb.width = rect.width * scale; vb.height = rect.height * scale;
      vb.x = full.w < vb.width ? (full.w - vb.width) / 2 : 0; vb.y = (full.h - vb.height) / 2;
      save();
    }
    var save = function () { view = { x: vb.x, y: vb.y, w: vb.width, h: vb.height }; };
    if (view) { vb.x = view.x; vb.y = view.y; vb.width = view.w; vb.height = view.h; }
    else fit(1.35); // start readable (text at least ~9 px), anchored at the left
    svg.removeAttribute("width"); svg.removeAttribute("height");
    svg.style.transformOrigin = "0 0";

    var t = { x: 0, y: 0, s: 1 }, timer = null;
    function show() { svg.style.transform = "translate(" + t.x + "px," + t.y + "px) scale(" + t.s + ")"; }
    function commit() {
      timer = null;
      if (t.x === 0 && t.y === 0 && t.s === 1) return;
      var k = vb.width / rect.width;
      vb.x += -t.x / t.s * k; vb.y += -t.y / t.s * k;
      vb.width /= t.s; vb.height /= t.s;
      t = { x: 0, y: 0, s: 1 }; svg.style.transform = ""; save();
    }
    function zoomAt(px, py, f) { // f > 1: zoom out
      t.x = px - (px - t.x) / f; t.y = py - (py - t.y) / f; t.s /= f; show();
      if (timer) clearTimeout(timer);
      timer = setTimeout(commit, 160);
    }
    wrap.addEventListener("wheel", function (e) {
      e.preventDefault();
      rect = wrap.getBoundingClientRect();
      zoomAt(e.clientX - rect.left, e.clientY - rect.top, e.deltaY > 0 ? 1.15 : 1 / 1.15);
    }, { passive: false });
    var drag = null;
    wrap.addEventListener("mousedown", function (e) {
      if (e.button !== 0 || e.target.closest(".dag-tools")) return;
      if (timer) { clearTimeout(timer); commit(); }
      rect = wrap.getBoundingClientRect();
      drag = { x: e.clientX, y: e.clientY, moved: false };
      wrap.classList.add("dragging");
    });
    window.addEventListener("mousemove", function (e) {
      if (!drag) return;
      var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      t.x = dx; t.y = dy; show();
    });
    window.addEventListener("mouseup", function () {
      if (!drag) return;
      wrap.classList.remove("dragging"); commit();
      setTimeout(function () { drag = null; }, 0);
    });
    wrap.addEventListener("click", function (e) { if (drag && drag.moved) e.preventDefault(); }, true);
    wrap.addEventListener("dblclick", function (e) {
      if (e.target.closest("a, .dag-tools")) return;
      rect = wrap.getBoundingClientRect(); fit(0);
    });
    // Buttons for those without a wheel: zoom in, out, and fit the whole graph.
    var tools = document.createElement("div");
    tools.className = "dag-tools";
    [["+", "zoom in", 1 / 1.3], ["\u2212", "zoom out", 1.3], ["\u2922", "fit the graph", 0]].forEach(function (b) {
      var btn = document.createElement("button");
      btn.type = "button"; btn.textContent = b[0]; btn.title = b[1];
      btn.setAttribute("aria-label", b[1]);
      btn.addEventListener("click", function () {
        rect = wrap.getBoundingClientRect();
        if (b[2]) { zoomAt(rect.width / 2, rect.height / 2, b[2]); if (timer) { clearTimeout(timer); commit(); } }
        else fit(0);
      });
      tools.appendChild(btn);
    });
    wrap.appendChild(tools);
    wrap.setAttribute("data-ready", "1");
    if (window.performance && performance.mark) performance.mark("dag-ready");
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
