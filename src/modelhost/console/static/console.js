// The console's own script: confirmations, the create form's weights switch, the logs tail
// that follows, and the six health charts (uPlot) from the metric history. No inline script
// anywhere (the pages' Content-Security-Policy allows only this server's files).
(function () {
  "use strict";

  // Forms that change something for good ask first.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var message = form && form.getAttribute && form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
    }
  });

  // The create form shows the fields of the chosen weights source only.
  function showSource() {
    var chosen = document.querySelector('input[name="weights"]:checked');
    var value = chosen ? chosen.value : "none";
    document.querySelectorAll(".source[data-source]").forEach(function (el) {
      el.hidden = el.getAttribute("data-source") !== value;
    });
  }
  document.addEventListener("change", function (event) {
    if (event.target && event.target.name === "weights") showSource();
  });

  // The logs tail follows the newest line unless the reader scrolled up.
  var atBottom = true;
  document.addEventListener("htmx:beforeSwap", function (event) {
    var pre = event.detail.target.querySelector && event.detail.target.querySelector("pre.logs");
    if (pre) atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    var pre = event.detail.target.querySelector && event.detail.target.querySelector("pre.logs");
    if (pre && atBottom) pre.scrollTop = pre.scrollHeight;
  });

  // --- health charts ---------------------------------------------------------------------
  var CHARTS = {
    requests_per_s: [["requests/s", "requests_per_s", "#2563eb"]],
    tokens_per_s: [["tokens/s", "tokens_per_s", "#7c3aed"]],
    inference_time: [
      ["p50", "inference_time_p50_s", "#059669"],
      ["p95", "inference_time_p95_s", "#d97706"],
    ],
    queue_time_s: [["queue s", "queue_time_s", "#dc2626"]],
    replicas: [["replicas", "replicas", "#0891b2"]],
    gpu_utilization: [["utilisation", "gpu_utilization", "#4b5563"]],
  };
  // The least top of each chart's y axis, so that an idle deployment reads as zero, not noise.
  var FLOOR = { requests_per_s: 1, tokens_per_s: 1, inference_time: 0.1, queue_time_s: 0.01, replicas: 1, gpu_utilization: 1 };
  var REFRESH_MS = { "1h": 5000, "24h": 60000, "7d": 300000 };

  // What the page fetched and drew, for tests and the curious: window.mhCharts.
  var state = { window: "1h", loaded: 0, points: {}, resolution_s: null, source: null };
  window.mhCharts = state;
  var plots = {};
  var timer = null;

  function columns(series, specs) {
    var first = series[specs[0][1]] || [];
    var xs = first.map(function (p) { return p[0]; });
    var data = [xs];
    specs.forEach(function (spec) {
      var points = series[spec[1]] || [];
      data.push(points.map(function (p) { return p[1]; }));
    });
    return data;
  }

  function countPoints(data) {
    var n = 0;
    for (var i = 1; i < data.length; i++) {
      data[i].forEach(function (v) { if (v !== null && v !== undefined) n++; });
    }
    return n;
  }

  // A point with no neighbour (a lone bucket between gaps) is drawn as a dot: a line needs two.
  function isolated(u, seriesIdx) {
    var ys = u.data[seriesIdx];
    var out = [];
    for (var i = 0; i < ys.length; i++) {
      if (ys[i] == null) continue;
      var before = i > 0 ? ys[i - 1] : null;
      var after = i + 1 < ys.length ? ys[i + 1] : null;
      if (before == null && after == null) out.push(i);
    }
    return out;
  }

  function makePlot(el, name, specs, data) {
    var width = Math.max(280, el.clientWidth - 8);
    var floor = FLOOR[name] || 1;
    var opts = {
      title: el.getAttribute("data-title"),
      width: width,
      height: 170,
      scales: {
        x: { time: true },
        y: { range: function (u, min, max) { return [0, Math.max((max || 0) * 1.1, floor)]; } },
      },
      series: [{}].concat(specs.map(function (spec) {
        return {
          label: spec[0], stroke: spec[2], width: 1.5, spanGaps: false,
          points: { show: true, size: 5, fill: spec[2], filter: isolated },
        };
      })),
      axes: [{}, { size: 55 }],
      legend: { show: true },
    };
    return new window.uPlot(opts, data, el);
  }

  function draw(payload) {
    var series = payload.series || {};
    document.querySelectorAll(".chart[data-chart]").forEach(function (el) {
      var name = el.getAttribute("data-chart");
      var specs = CHARTS[name];
      if (!specs) return;
      var data = columns(series, specs);
      state.points[name] = countPoints(data);
      if (plots[name]) {
        plots[name].setData(data);
      } else {
        el.innerHTML = "";
        plots[name] = makePlot(el, name, specs, data);
      }
    });
    state.resolution_s = payload.resolution_s;
    state.source = payload.gpu_utilization_source;
    var source = document.getElementById("gpu-source");
    if (source) {
      source.textContent = "1 point = " + payload.resolution_s + " s" +
        (payload.gpu_utilization_source === "engine_busy"
          ? " · GPU utilisation: the engine's busy time (CPU or virtual GPU)"
          : payload.gpu_utilization_source === "nvml" ? " · GPU utilisation: NVML" : "");
    }
    state.loaded++;
  }

  function load() {
    var charts = document.getElementById("charts");
    if (!charts || !window.uPlot) return;
    var url = charts.getAttribute("data-metrics-url") + "?window=" + encodeURIComponent(state.window);
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (payload) { if (payload) draw(payload); })
      .catch(function () { /* the next refresh tries again */ });
  }

  function schedule() {
    if (timer) clearInterval(timer);
    timer = setInterval(load, REFRESH_MS[state.window] || 5000);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("#windows button[data-window]");
    if (!button) return;
    state.window = button.getAttribute("data-window");
    document.querySelectorAll("#windows button").forEach(function (b) {
      b.classList.toggle("active", b === button);
    });
    Object.keys(plots).forEach(function (k) { plots[k].destroy(); delete plots[k]; });
    load();
    schedule();
  });

  document.addEventListener("DOMContentLoaded", function () {
    showSource();
    if (document.getElementById("charts")) {
      load();
      schedule();
    }
  });
})();
