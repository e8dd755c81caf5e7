// vmrunner dashboard: the live log and step states of a run page, over Server-Sent Events.
"use strict";
(function () {
  const main = document.getElementById("run");
  if (!main || !window.EventSource) return;
  const MAX_LINES = 5000; // per log box; the full log stays in the API
  const run = main.dataset.run;
  const boxes = new Map();
  document.querySelectorAll("pre.log").forEach(function (pre) {
    boxes.set(pre.dataset.job + "\u0000" + pre.dataset.step, pre);
  });
  function box(job, step) {
    return boxes.get(job + "\u0000" + step) || boxes.get(job + "\u0000-1");
  }
  function badge(result) {
    const span = document.createElement("span");
    span.className = "badge " + result;
    span.textContent = result.replace("_", " ");
    return span;
  }
  const source = new EventSource("/runs/" + encodeURIComponent(run) + "/live");
  source.addEventListener("log", function (event) {
    JSON.parse(event.data).forEach(function (row) {
      const pre = box(row.job, row.step);
      if (!pre || pre.childElementCount >= MAX_LINES) return;
      const line = document.createElement("div");
      line.className = row.kind === "line" ? row.stream : "group";
      line.textContent = "  ".repeat(row.depth || 0) +
        (row.kind === "group" ? "▸ " + row.text : row.kind === "endgroup" ? "" : row.text);
      if (row.kind === "endgroup") return;
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.appendChild(line);
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    });
  });
  source.addEventListener("steps", function (event) {
    const data = JSON.parse(event.data);
    data.steps.forEach(function (s) {
      const row = document.getElementById("step-" + s.job + "-" + s.step);
      if (!row) return;
      row.querySelector(".result").replaceChildren(badge(s.result));
      row.querySelector(".duration").textContent = s.duration;
    });
    document.getElementById("run-status").replaceChildren(badge(data.run));
  });
  source.addEventListener("end", function (event) {
    source.close();
    document.getElementById("run-status").replaceChildren(badge(JSON.parse(event.data).run));
    main.dataset.status = "completed";
  });
})();
