(function () {
  "use strict";
  var root = document.documentElement;
  window.addEventListener("error", function (e) { root.setAttribute("data-script-error", String(e.message)); });
  var data = JSON.parse(document.getElementById("dcx-rows").textContent);
  var cols = data.columns, rows = data.rows, PAGE = 100;
  var at = function (name) { return cols.indexOf(name); };
  var iStatus = at("status"), iFlag = at("flagged"), iP = at("p_positive"), iIn = at("in_distribution");
  var view = { filter: "all", order: "table", query: "", page: 0 };
  var picked = rows;

  var head = document.querySelector("#rows thead"), tbody = document.querySelector("#rows tbody");
  var tr = document.createElement("tr");
  cols.forEach(function (c) { var th = document.createElement("th"); th.textContent = c; tr.appendChild(th); });
  head.appendChild(tr);

  function keep(r) {
    var f = view.filter;
    if (f === "flagged" && !(iFlag >= 0 && r[iFlag] === true)) return false;
    if ((f === "ok" || f === "skipped" || f === "error") && r[iStatus] !== f) return false;
    if (f === "ood" && !(iIn >= 0 && r[iIn] === false)) return false;
    if (!view.query) return true;
    for (var k = 0; k < r.length; k++) {
      if (typeof r[k] === "string" && r[k].toLowerCase().indexOf(view.query) >= 0) return true;
    }
    return false;
  }

  function select() {
    picked = rows.filter(keep);
    if (view.order === "p" && iP >= 0) {
      picked = picked.slice().sort(function (a, b) {
        return (b[iP] === null ? -1 : b[iP]) - (a[iP] === null ? -1 : a[iP]);
      });
    }
    view.page = 0;
    draw();
  }

  function draw() {
    var pages = Math.max(1, Math.ceil(picked.length / PAGE));
    view.page = Math.min(Math.max(view.page, 0), pages - 1);
    var start = view.page * PAGE, end = Math.min(picked.length, start + PAGE);
    var frag = document.createDocumentFragment();
    for (var i = start; i < end; i++) {
      var r = picked[i], row = document.createElement("tr");
      if (iFlag >= 0 && r[iFlag] === true) row.className = "flag";
      for (var k = 0; k < r.length; k++) {
        var td = document.createElement("td");
        td.textContent = r[k] === null ? "" : String(r[k]);
        if (typeof r[k] === "number") td.className = "n";
        row.appendChild(td);
      }
      frag.appendChild(row);
    }
    tbody.textContent = "";
    tbody.appendChild(frag);
    document.getElementById("f-info").textContent = picked.length
      ? "rows " + (start + 1) + "\u2013" + end + " of " + picked.length + " (page " + (view.page + 1) + "/" + pages + ")"
      : "no rows";
  }

  document.getElementById("f-filter").addEventListener("change", function (e) { view.filter = e.target.value; select(); });
  document.getElementById("f-order").addEventListener("change", function (e) { view.order = e.target.value; select(); });
  document.getElementById("f-query").addEventListener("input", function (e) {
    view.query = e.target.value.trim().toLowerCase(); select();
  });
  document.getElementById("f-prev").addEventListener("click", function () { view.page--; draw(); });
  document.getElementById("f-next").addEventListener("click", function () { view.page++; draw(); });
  select();

  window.addEventListener("load", function () {
    var images = document.images, decoded = 0;
    for (var i = 0; i < images.length; i++) if (images[i].complete && images[i].naturalWidth > 0) decoded++;
    root.setAttribute("data-images", String(images.length));
    root.setAttribute("data-images-decoded", String(decoded));
    root.setAttribute("data-table-rows", String(tbody.rows.length));
    root.setAttribute("data-ready-ms", String(Math.round(performance.now())));
    root.setAttribute("data-report", "ready");
  });
})();
