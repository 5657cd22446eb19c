# What an Open OnDemand dashboard does with a batch connect app, step for step as OOD's own
# code does it (ondemand e5bbaf1d, ood_core 86656b38):
#
#   ruby ood_dashboard.rb submit APP WORK_DIR   (the POSTed form values as JSON on stdin)
#     1. BatchConnect::App#build_session_context: one attribute per `form:` entry of form.yml
#        (plus the hidden `cluster` one), the POSTed values assigned over their `value:`s.
#     2. App#submit_opts: the smart attributes' submit hashes, deep-merged with submit.yml.erb
#        rendered (ERB, trim_mode "-") against SessionContext#to_openstruct(addons:
#        {staged_root:}) -- form attributes are methods there.
#     3. Session#stage: template/ copied without its *.erb files, each *.erb rendered against
#        `TemplateBinding = Struct.new(:session, :context)`: ONLY `session` and `context`
#        exist there (vendor/ondemand/apps/dashboard/app/models/batch_connect/session.rb).
#     4. Session#script_content: ood_core's Factory.build (the basic template) with the
#        session's work_dir, conn_file, before/script/after/clean files.
#     5. Session#script_options + the Slurm adapter's #submit: `sbatch -D WORK_DIR -J NAME
#        -o output.log [-p -A -t --mail-type from the smart attributes] --export NONE
#        NATIVE... --parsable`, the script on stdin with `#!/bin/bash` put in front
#        (shell_path). Printed as JSON {"argv": [...], "script": PATH}; the caller runs it.
#   ruby ood_dashboard.rb view APP WORK_DIR
#     sessions/connections/_custom.html.erb: view.html.erb rendered against
#     `OpenStruct.new(YAML.safe_load(connection.yml)).instance_eval { binding }`, then
#     OodAppkit.markdown (Redcarpet, OodAppkit's options).
#   ruby ood_dashboard.rb binding-check
#     proves the TemplateBinding mirror: a bare name raises NameError, context.* works.
# ood_core comes from $OOD_CORE_DIR (its sources), else the vendored copy beside the repository.
require "erb"
require "fileutils"
require "json"
require "ostruct"
require "securerandom"
require "yaml"

core = ENV.fetch("OOD_CORE_DIR", "")
core = File.expand_path("../../../shared/vendor/ood_core", __dir__) if core.empty?
lib = File.join(core, "lib")
abort "ood_core not found in #{core} (set OOD_CORE_DIR)" unless File.directory?(File.join(lib, "ood_core"))
$LOAD_PATH.unshift(lib)
module OodCore; module BatchConnect; class TemplateNotSpecified < StandardError; end
  class TemplateNotFound < StandardError; end; end; end
require "ood_core/refinements/hash_extensions"
require "ood_core/refinements/array_extensions"
require "ood_core/batch_connect/template"
require "ood_core/batch_connect/factory"

def deep_merge(a, b)
  a.merge(b) { |_k, x, y| x.is_a?(Hash) && y.is_a?(Hash) ? deep_merge(x, y) : y }
end

def deep_symbolize(h)
  case h
  when Hash then h.each_with_object({}) { |(k, v), o| o[k.to_sym] = deep_symbolize(v) }
  when Array then h.map { |v| deep_symbolize(v) }
  else h
  end
end

def blank?(v) = v.nil? || v.to_s.strip.empty?

# SmartAttributes::Attribute (apps/dashboard/app/lib/smart_attributes/attribute.rb).
class Attribute
  attr_reader :id, :opts

  def initialize(id, opts = {})
    @id = id.to_s.downcase
    @opts = (opts || {}).to_h.transform_keys(&:to_sym)
  end

  def value = opts[:value].to_s
  def value=(other)
    @opts[:value] = other
  end
  def fixed? = !!opts[:fixed]
  def submit(fmt: nil) = {}
  def ==(other) = id == other.to_s
  def to_s = value.to_s
end

# The smart attributes this app uses (smart_attributes/attributes/*.rb): their #value and
# #submit exactly.
class BcNumHours < Attribute
  def value = (opts[:value] || "1").to_s
  def submit(fmt: nil) = { script: { wall_time: (blank?(value) ? 1 : value.to_i) * 3600 } }
end

class BcAccount < Attribute
  def submit(fmt: nil) = { script: { accounting_id: blank?(value) ? nil : value.strip } }
end

class BcQueue < Attribute
  def submit(fmt: nil) = { script: { queue_name: blank?(value) ? nil : value.strip } }
end

class BcEmailOnStarted < Attribute
  def submit(fmt: nil) = { script: { email_on_started: !value.to_i.zero? } }
end

SMART = { "bc_num_hours" => BcNumHours, "bc_account" => BcAccount, "bc_queue" => BcQueue,
          "bc_email_on_started" => BcEmailOnStarted }.freeze

# BatchConnect::SessionContext (session_context.rb): attributes reached through
# method_missing, to_h, to_openstruct; `partition` and `filter` redefined as there.
class SessionContext
  include Enumerable

  def initialize(attributes = [])
    @attributes = attributes
  end

  def [](id) = @attributes.detect { |attribute| attribute == id }
  def each(&block) = @attributes.each(&block)

  def method_missing(method_name, *arguments, &block)
    if /^(?<id>[^=]+)(?<assign>=)?$/ =~ method_name.to_s && (attribute = self[id])
      assign ? attribute.send("value=", *arguments) : attribute.value
    else
      super
    end
  end

  def respond_to_missing?(method_name, include_private = false)
    (/^(?<id>[^=]+)=?$/ =~ method_name.to_s && self[id]) || super
  end

  def attributes=(params = {})
    params&.each do |attr, value|
      public_send("#{attr}=", value) if respond_to?("#{attr}=")
    end
  end

  def as_json = @attributes.reject(&:fixed?).to_h { |a| [a.id, a.value] }
  def to_h = Hash[*map { |a| [a.id.to_sym, a.value] }.flatten]

  def to_openstruct(addons: {})
    context_attrs = to_h
    illegal_attrs = OpenStruct.new.methods & context_attrs.keys
    unless illegal_attrs.empty?
      raise ArgumentError, "#{illegal_attrs.inspect} are keywords that cannot be used as names for form items"
    end

    OpenStruct.new(context_attrs.merge(addons.transform_keys(&:to_sym)))
  end

  def partition(&block) = block ? @attributes.partition(&block) : self["partition"].value
  def filter(&block) = block ? @attributes.filter(&block) : self["filter"].value
end

# BatchConnect::Session's state that templates may see, and its TemplateBinding.
Session = Struct.new(:id, :cluster_id, :job_id, :created_at, :token, :title, :script_type,
                     :staged_root)
TemplateBinding = Struct.new(:session, :context) do
  def get_binding
    binding()
  end
end

def render(path, bind)
  erb = ERB.new(File.read(path), trim_mode: "-")
  erb.filename = path.to_s
  erb.result(bind)
end

def session_context(app, posted)
  form = YAML.safe_load(File.read(File.join(app, "form.yml")))
  specs = (form["attributes"] || {}).transform_keys(&:to_s)
  ids = Array(form["form"]).map(&:to_s)
  # App#add_cluster_widget: one cluster: a hidden field holding its id.
  ids.unshift("cluster") unless ids.include?("cluster")
  specs["cluster"] = { "value" => form["cluster"].to_s, "widget" => "hidden_field" }.merge(specs["cluster"] || {})
  attrs = ids.map { |id| (SMART[id] || Attribute).new(id, specs[id] || {}) }
  ctx = SessionContext.new(attrs)
  ctx.attributes = posted
  ctx
end

def seconds_to_duration(time) = format("%02d:%02d:%02d", time / 3600, time / 60 % 60, time % 60)

# OodCore::Job::Adapters::Slurm#submit: the sbatch arguments for these script options.
def slurm_args(o)
  args = []
  args.concat ["-D", o[:workdir].to_s] unless o[:workdir].nil?
  if o[:email_on_started] && o[:email_on_terminated] then args.concat ["--mail-type", "ALL"]
  elsif o[:email_on_started] then args.concat ["--mail-type", "BEGIN"]
  elsif o[:email_on_terminated] then args.concat ["--mail-type", "END"]
  elsif o[:email_on_started] == false && o[:email_on_terminated] == false
    args.concat ["--mail-type", "NONE"]
  end
  args.concat ["-J", o[:job_name]] unless o[:job_name].nil?
  args.concat ["-o", o[:output_path].to_s] unless o[:output_path].nil?
  args.concat ["-p", o[:queue_name]] unless o[:queue_name].nil?
  args.concat ["-A", o[:accounting_id]] unless o[:accounting_id].nil?
  args.concat ["-t", seconds_to_duration(o[:wall_time])] unless o[:wall_time].nil?
  env = o[:job_environment] || {}
  args.concat ["--export", env.empty? ? (o[:copy_environment] ? "ALL" : "NONE") : env.keys.join(",")]
  args.concat o[:native] if o[:native]
  args.map(&:to_s) + ["--parsable"]
end

def submit(app, work_dir, posted)
  ctx = session_context(app, posted)
  session = Session.new(File.basename(work_dir), nil, nil, Time.now.to_i, "sys/hpcdesk",
                        "hpcdesk", nil, work_dir)
  # App#submit_opts
  hsh = ctx.reduce({}) { |h, attribute| deep_merge(h, attribute.submit) }
  struct = ctx.to_openstruct(addons: { staged_root: work_dir })
  submit_yml = YAML.safe_load(render(File.join(app, "submit.yml.erb"), struct.instance_eval { binding })).to_h
  opts = deep_merge(hsh, deep_symbolize(submit_yml))
  # Session#stage
  FileUtils.mkdir_p(work_dir, mode: 0o700)
  root = File.join(app, "template")
  Dir.glob("**/*", File::FNM_DOTMATCH, base: root).each do |rel|
    src = File.join(root, rel)
    next if File.directory?(src) || rel.end_with?(".erb") || File.basename(rel).match?(/\A\..*\.swp\z/)
    FileUtils.mkdir_p(File.dirname(File.join(work_dir, rel)))
    FileUtils.cp(src, File.join(work_dir, rel), preserve: true)
  end
  File.write(File.join(work_dir, "user_defined_context.json"), JSON.pretty_generate(ctx.as_json))
  bind = TemplateBinding.new(session, ctx).get_binding
  Dir.glob("**/*.erb", base: root).each do |rel|
    out = File.join(work_dir, rel.delete_suffix(".erb"))
    File.write(out, render(File.join(root, rel), bind))
    File.chmod(File.stat(File.join(root, rel)).mode, out)
  end
  # Session#script_content
  bc = opts.fetch(:batch_connect, {}).merge(
    work_dir: work_dir, conn_file: File.join(work_dir, "connection.yml"),
    before_file: File.join(work_dir, "before.sh"), script_file: File.join(work_dir, "script.sh"),
    after_file: File.join(work_dir, "after.sh"), clean_file: File.join(work_dir, "clean.sh"))
  bc[:template] ||= "basic"
  content = OodCore::BatchConnect::Factory.build(bc).to_s
  File.write(File.join(work_dir, "job_script_content.sh"), content)
  # Session#script_options (job_name: OOD_PORTAL / app / token) and the Slurm adapter
  options = { job_name: "ondemand/sys/dashboard/sys/hpcdesk", workdir: work_dir,
              output_path: File.join(work_dir, "output.log"), shell_path: "/bin/bash" }
            .merge(opts.fetch(:script, {}))
  File.write(File.join(work_dir, "job_script_options.json"), JSON.pretty_generate(options))
  script = File.join(work_dir, "job_script.sh")
  File.write(script, options[:shell_path] ? "#!#{options[:shell_path]}\n#{content}" : content)
  { "argv" => ["sbatch", *slurm_args(options)], "script" => script,
    "native" => options.fetch(:native, []) }
end

def view(app, work_dir)
  require "redcarpet"
  conn = OpenStruct.new(YAML.safe_load(File.read(File.join(work_dir, "connection.yml"))))
  html = ERB.new(File.read(File.join(app, "view.html.erb")), trim_mode: "-").result(conn.instance_eval { binding })
  # OodAppkit's markdown renderer (ood_appkit lib/ood_appkit/configuration.rb)
  Redcarpet::Markdown.new(Redcarpet::Render::HTML, autolink: true, tables: true, strikethrough: true,
                          fenced_code_blocks: true, no_intra_emphasis: true).render(html)
end

action, app, work_dir = ARGV
case action
when "submit"
  puts JSON.generate(submit(app, work_dir, JSON.parse($stdin.read)))
when "view"
  puts view(app, work_dir)
when "binding-check"
  ctx = SessionContext.new([Attribute.new("bc_queue", value: "gpu")])
  bind = TemplateBinding.new(Session.new("x"), ctx).get_binding
  puts ERB.new("<%= context.bc_queue %>").result(bind)
  begin
    ERB.new("<%= bc_queue %>").result(bind)
    puts "bare name rendered"
  rescue NameError => e
    puts "#{e.class}: #{e.message}"
  end
else
  abort "usage: ood_dashboard.rb submit|view APP WORK_DIR | binding-check"
end
