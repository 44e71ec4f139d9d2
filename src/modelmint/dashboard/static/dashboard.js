// ModelMint dashboard behaviour. No inline scripts anywhere (the pages' CSP forbids
// them): charts arrive as JSON data blocks that this file hands to plotly.js.
"use strict";

(function () {
  function drawCharts() {
    var charts = document.querySelectorAll(".chart[data-figure]");
    if (!charts.length) {
      return;
    }
    if (typeof window.Plotly === "undefined") {
      console.error("plotly.js did not load; charts cannot be drawn");
      return;
    }
    charts.forEach(function (element) {
      var source = document.getElementById(element.dataset.figure);
      if (!source) {
        return;
      }
      var figure = JSON.parse(source.textContent);
      var layout = Object.assign(
        {
          autosize: true,
          margin: { l: 56, r: 16, t: 40, b: 48 },
          font: { family: "system-ui, sans-serif", size: 12 },
          paper_bgcolor: "rgba(0,0,0,0)",
          plot_bgcolor: "rgba(0,0,0,0)",
          legend: { orientation: "h", y: -0.2 },
        },
        figure.layout || {}
      );
      var config = {
        responsive: true,
        displaylogo: false,
        modeBarButtonsToRemove: ["lasso2d", "select2d"],
      };
      window.Plotly.newPlot(element, figure.data || [], layout, config).then(function () {
        element.dataset.drawn = "true";
      });
    });
  }

  function bindPrint() {
    document.querySelectorAll("[data-print]").forEach(function (button) {
      button.addEventListener("click", function () {
        window.print();
      });
    });
  }

  function bindConfirm() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) {
          event.preventDefault();
        }
      });
    });
  }

  // A price file picked from disk is read into the text area, so the form posts it as
  // ordinary form text (no multipart upload needed).
  function bindFileToText() {
    document.querySelectorAll("input[type=file][data-into]").forEach(function (input) {
      input.addEventListener("change", function () {
        var target = document.getElementById(input.dataset.into);
        var file = input.files && input.files[0];
        if (!target || !file) {
          return;
        }
        file.text().then(function (text) {
          target.value = text;
        });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts();
    bindPrint();
    bindConfirm();
    bindFileToText();
  });
})();
