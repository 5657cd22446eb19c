# What an Open OnDemand dashboard does with a batch connect app, with the real ood_core:
#   ruby ood_dashboard.rb submit APP WORK_DIR  (form values as JSON on stdin)
#     renders submit.yml.erb with the form values as the context's methods, stages
#     template/ into WORK_DIR rendering every .erb, builds the batch script with
#     OodCore::BatchConnect::Factory.build_basic and writes it to WORK_DIR/job_script.sh;
#     prints {"native": [...], "script": PATH} as JSON.
#   ruby ood_dashboard.rb view APP WORK_DIR
#     reads WORK_DIR/connection.yml with YAML.safe_load and renders view.html.erb with it.
# ood_core comes from $OOD_CORE_DIR (its sources, or an installed gem's directory), else the
# vendored copy beside the repository (../shared/vendor/ood_core).
require "erb"
require "fileutils"
require "json"
require "yaml"

core = ENV.fetch("OOD_CORE_DIR", "")
core = File.expand_path("../../../shared/vendor/ood_core", __dir__) if core.empty?
lib = File.join(core, "lib")
abort "ood_core not found in #{core} (set OOD_CORE_DIR)" unless File.directory?(File.join(lib, "ood_core"))
$LOAD_PATH.unshift(lib)
if File.exist?(File.join(lib, "ood_core.rb"))
  require "ood_core" # an installed gem: the whole library
else
  module OodCore; module BatchConnect; end; end
  require "ood_core/refinements/hash_extensions"
  require "ood_core/refinements/array_extensions"
  require "ood_core/batch_connect/template"
  require "ood_core/batch_connect/factory"
  require "ood_core/batch_connect/templates/basic"
end

# The dashboard's rendering context: every form attribute (or connection.yml key) a method.
class Context
  def initialize(values)
    values.each { |k, v| define_singleton_method(k.to_sym) { v } }
  end

  def render(path)
    ERB.new(File.read(path), trim_mode: "-").result(binding)
  end
end

action, app, work_dir = ARGV
case action
when "submit"
  values = JSON.parse($stdin.read)
  ctx = Context.new(values)
  submit = YAML.safe_load(ctx.render(File.join(app, "submit.yml.erb")))
  FileUtils.mkdir_p(work_dir)
  FileUtils.cp_r(File.join(app, "template", "."), work_dir)
  Dir.glob(File.join(work_dir, "**", "*.erb")).each do |erb|
    out = erb.delete_suffix(".erb")
    File.write(out, ctx.render(erb))
    File.chmod(File.stat(erb).mode, out)
    File.delete(erb)
  end
  bc = submit.fetch("batch_connect")
  raise "only the basic template is emulated" unless bc.fetch("template") == "basic"
  script = OodCore::BatchConnect::Factory.build_basic(bc.merge("work_dir" => work_dir)).to_s
  path = File.join(work_dir, "job_script.sh")
  File.write(path, script)
  puts JSON.generate({ "native" => submit.fetch("script", {}).fetch("native", []), "script" => path })
when "view"
  conn = YAML.safe_load(File.read(File.join(work_dir, "connection.yml")))
  puts Context.new(conn).render(File.join(app, "view.html.erb"))
else
  abort "usage: ood_dashboard.rb submit|view APP WORK_DIR"
end
