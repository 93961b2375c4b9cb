// AI PLAZA's only script: a running job's progress, pushed by the console as server-sent events,
// replaces the page's progress section. Every page works without it (reload to refresh).
document.querySelectorAll("[data-live]").forEach(function (section) {
  var id = section.id;
  var source = new EventSource(section.getAttribute("data-live"));
  source.addEventListener("progress", function (event) {
    var current = document.getElementById(id);
    if (current) {
      current.outerHTML = event.data;
    }
  });
  source.addEventListener("done", function () {
    source.close();
  });
});
