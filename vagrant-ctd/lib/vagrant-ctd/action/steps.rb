# frozen_string_literal: true

require "fileutils"
require "securerandom"
require "log4r"
require_relative "../client"
require_relative "../errors"
require_relative "../naming"

module VagrantPlugins
  module Ctd
    module Action
      # The middleware steps of the chains in action.rb; each does one REST call (or a few).
      module Steps
        # Base: @app, the machine's provider config, the client Connect made, the instance name.
        class Step
          def initialize(app, _env)
            @app = app
            @logger = Log4r::Logger.new("vagrant_ctd::action")
          end

          def cfg(env)
            env[:machine].provider_config
          end

          def ctd(env)
            env[:ctd]
          end

          def name(env)
            env[:machine].id
          end

          def say(env, text)
            env[:ui].info(text)
          end
        end

        class Connect < Step
          def call(env)
            env[:ctd] = env[:machine].provider.client
            @app.call(env)
          end
        end

        class IsCreated < Step
          def call(env)
            env[:result] = env[:machine].state.id != :not_created
            @app.call(env)
          end
        end

        class State < Step
          def call(env)
            env[:result] = env[:machine].state.id
            @app.call(env)
          end
        end

        # An unknown box is a clear error here: ctd boxes come from files (ctctl template export
        # --vagrant-box), so there is no catalog to ask (and no network to wait for).
        class CheckBox < Step
          def call(env)
            machine = env[:machine]
            vm = machine.config.vm
            if !cfg(env).template && vm.box && machine.box.nil? && (vm.box_url.nil? || vm.box_url.empty?)
              raise CtdError, "box #{vm.box.inspect} is not added for provider ctd: make one with " \
                              "'ctctl template export TEMPLATE --vagrant-box FILE.box' and 'vagrant box add " \
                              "#{vm.box} FILE.box', or set ctd.template to use a ctd template directly"
            end
            @app.call(env)
          end
        end

        # The box's rootfs becomes a ctd template the first time (named after box and version);
        # later machines of the same box reuse it. ctd.template skips boxes altogether.
        class ImportBox < Step
          def call(env)
            env[:ctd_template] = cfg(env).template || import(env)
            @app.call(env)
          end

          def import(env)
            box = env[:machine].box
            template = Naming.template_for(box.name, box.version)
            built = ctd(env).get("/1.0/templates")["templates"].any? { |t| t["name"] == template && t["built"] }
            return template if built
            raise CtdError, "a box is imported from a file on ctd's host: use a local ctd, or ctd.template" if ctd(env).remote?
            rootfs = Dir[File.join(box.directory.to_s, "rootfs.tar.*")].first
            raise CtdError, "box #{box.name} has no rootfs.tar.* for ctd; is it a box of 'ctctl template export --vagrant-box'?" unless rootfs
            say(env, "Importing box #{box.name} into ctd as template #{template} (once; later machines reuse it)...")
            ctd(env).run("POST", "/1.0/templates", { "import" => rootfs, "name" => template })
            template
          end
        end

        # The NIC: the first private_network (ctd__network: NAME, ip: or type: "dhcp" for the
        # pool), else ctd.network, else ctd's default network. Only worked out here: Create makes
        # a missing network (when a subnet is given: ctd__subnet / ctd.network_subnet, "auto")
        # right before the instance, and takes it back if the instance cannot be made.
        class PrepareNetwork < Step
          def call(env)
            net, ip, subnet = Naming.network_of(env[:machine])
            if net
              env[:ctd_network] = [net, subnet]
              env[:ctd_nics] = [{ "network" => net, "mode" => "bridged", "addresses" => ip ? [ip] : [] }]
            end
            @app.call(env)
          end
        end

        class Create < Step
          def call(env)
            Key.start(env) if Key.needed?(env[:machine])  # the key pair is made meanwhile (boot.rb)
            create(env) if env[:machine].state.id == :not_created
            @app.call(env)
          end

          def create(env)
            net, subnet = env[:ctd_network]
            made = net && ensure_network(env, net, subnet)
            begin
              create_instance(env)
            rescue StandardError
              ctd(env).request("DELETE", "/1.0/networks/#{net}") if made
              raise
            end
            # destroy drops a network the plugin manages once nothing uses it
            File.write(env[:machine].data_dir.join("ctd_network"), net) if net && subnet
          end

          # true when it made the network
          def ensure_network(env, net, subnet)
            ctd(env).get("/1.0/networks/#{net}")
            false
          rescue Client::NotFound
            raise CtdError, "network #{net} does not exist in ctd: create it (ctctl network create #{net} " \
                            "--subnet CIDR) or set ctd.network_subnet so the plugin makes it" unless subnet
            say(env, "Creating ctd network #{net} (#{subnet})...")
            body = { "name" => net }
            body["subnet"] = subnet unless subnet == "auto"  # auto: ctd picks a free private /24
            body["nat"] = true if cfg(env).network_nat
            ctd(env).request("POST", "/1.0/networks", body)
            true
          end

          def create_instance(env)
            machine = env[:machine]
            c = cfg(env)
            instance = c.name || Naming.instance_for(machine)
            body = { "name" => instance, "type" => c.type, "template" => env[:ctd_template],
                     "description" => "vagrant machine #{machine.name} of #{machine.env.root_path}" }
            vm = c.type == "vm"
            # a VM's disk size is its disk's (vm.disk), a container's a limit (diskspace)
            limits = { "ram" => c.memory_limit, "cpus" => c.cpus&.to_s, "diskspace" => vm ? nil : c.diskspace&.to_s }.compact
            body["limits"] = limits unless limits.empty?
            body["vm"] = { "disk" => c.diskspace.to_s } if vm && c.diskspace
            body["hostname"] = machine.config.vm.hostname if machine.config.vm.hostname
            body["features"] = c.features unless c.features.empty?
            body["privileged"] = true if c.privileged
            body["nics"] = env[:ctd_nics] if env[:ctd_nics]
            mounts = machine.provider.pending_mounts
            body["mounts"] = mounts unless mounts.empty?
            say(env, "Creating ctd #{c.type} #{instance} from template #{env[:ctd_template]}...")
            ctd(env).run("POST", "/1.0/instances", body)
            machine.id = instance
          end
        end

        # forwarded_port entries as port forwards of the instance's (NAT) network; Vagrant's own
        # ssh forward (id "ssh") is left out: Vagrant reaches the instance at its address.
        class ForwardPorts < Step
          def call(env)
            ports = env[:machine].config.vm.networks.select { |t, o| t == :forwarded_port && o[:id] != "ssh" }
            forward(env, ports.map(&:last)) unless ports.empty?
            @app.call(env)
          end

          def forward(env, ports)
            nic = (ctd(env).get("/1.0/instances/#{name(env)}")["instance"]["nics"] || []).first
            raise CtdError, "forwarded_port needs a NIC on a ctd NAT network" unless nic && nic["network"]
            path = "/1.0/networks/#{nic["network"]}/forwards"
            have = ctd(env).get(path)["forwards"] || []
            ports.each do |o|
              proto = (o[:protocol] || "tcp").to_s
              next if have.any? { |f| f["instance"] == name(env) && f["host_port"] == o[:host] && f["port"] == o[:guest] && f["proto"] == proto }
              body = { "host_port" => o[:host], "instance" => name(env), "port" => o[:guest], "proto" => proto }
              body["host_address"] = o[:host_ip] if o[:host_ip] && !o[:host_ip].empty? && o[:host_ip] != "0.0.0.0"
              say(env, "Forwarding host port #{o[:host]} to #{o[:guest]}/#{proto}")
              ctd(env).request("POST", path, body)
            end
          end
        end

        # Power: one state change each, waited for.
        class PowerStep < Step
          def power(env, action, extra = {})
            ctd(env).run("PUT", "/1.0/instances/#{name(env)}/state", { "action" => action }.merge(extra))
          end
        end

        class Start < PowerStep
          def call(env)
            say(env, "Starting #{name(env)}...")
            power(env, "start")
            inst = ctd(env).get("/1.0/instances/#{name(env)}")["instance"]
            if inst["state"] != "running"  # its init ended at once: say why, not "invalid state"
              why = (inst["last_exit"] || {})["text"] || "it is #{inst["state"]}"
              raise CtdError, "#{name(env)} stopped right after its start (#{why}); ctd's log says more"
            end
            @app.call(env)
          end
        end

        class Stop < PowerStep
          def call(env)
            if env[:machine].state.id == :suspended
              power(env, "resume")
            end
            if env[:machine].state.id == :running
              say(env, "Stopping #{name(env)}...")
              power(env, "stop", env[:force_halt] ? { "force" => true } : {})
            end
            @app.call(env)
          end
        end

        class Suspend < PowerStep
          def call(env)
            say(env, "Suspending #{name(env)}...")
            power(env, "suspend")
            @app.call(env)
          end
        end

        class Resume < PowerStep
          def call(env)
            say(env, "Resuming #{name(env)}...")
            power(env, "resume")
            @app.call(env)
          end
        end

        # The instance, then a network the plugin made for it once nothing else uses it (before
        # machine.id = nil: Vagrant empties the machine's data directory, the marker with it).
        class Destroy < Step
          def call(env)
            say(env, "Destroying #{name(env)}...")
            ctd(env).run("DELETE", "/1.0/instances/#{name(env)}?force=true")
            drop_network(env)
            env[:machine].id = nil
            @app.call(env)
          end

          def drop_network(env)
            marker = env[:machine].data_dir.join("ctd_network")
            return unless marker.file?
            net = marker.read.strip
            begin
              ctd(env).request("DELETE", "/1.0/networks/#{net}")
              say(env, "Deleted ctd network #{net}")
            rescue Client::NotFound
              nil
            rescue CtdError => e
              say(env, "ctd network #{net} stays: #{e.message}")  # another machine uses it
            end
            marker.delete
          end
        end

        class SnapshotSave < Step
          def call(env)
            ctd(env).run("POST", "/1.0/instances/#{name(env)}/snapshots", { "name" => env[:snapshot_name] })
            say(env, "Snapshot #{env[:snapshot_name]} saved")
            @app.call(env)
          end
        end

        # A running instance is rolled back and restarted; a stopped one stays stopped.
        class SnapshotRestore < Step
          def call(env)
            running = env[:machine].state.id == :running
            say(env, "Restoring snapshot #{env[:snapshot_name]}...")
            ctd(env).run("POST", "/1.0/instances/#{name(env)}/rollback",
                         { "snapshot" => env[:snapshot_name], "restart" => running })
            @app.call(env)
          end
        end

        class SnapshotDelete < Step
          def call(env)
            ctd(env).request("DELETE", "/1.0/instances/#{name(env)}/snapshots/#{env[:snapshot_name]}")
            say(env, "Snapshot #{env[:snapshot_name]} deleted")
            @app.call(env)
          end
        end

        # vagrant package: the stopped instance becomes a scratch template, exported into the
        # package directory as rootfs.tar.gz (Vagrant writes metadata.json and the key).
        class PackageRootfs < Step
          def call(env)
            raise CtdError, "vagrant package needs a local ctd (ctd writes the rootfs on its host)" if ctd(env).remote?
            scratch = "vagrant-package-#{SecureRandom.hex(4)}"
            say(env, "Exporting #{name(env)} as a box...")
            ctd(env).run("POST", "/1.0/templates", { "name" => scratch, "from" => name(env) })
            begin
              out = File.join(env["package.directory"], "rootfs.tar.gz")
              ctd(env).run("POST", "/1.0/templates/#{scratch}/export", { "file" => out })
            ensure
              ctd(env).request("DELETE", "/1.0/templates/#{scratch}")
            end
            @app.call(env)
          end
        end
      end
    end
  end
end
