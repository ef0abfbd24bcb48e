# frozen_string_literal: true

require "io/wait"
require "socket"
require "vagrant/util/keypair"
require_relative "../errors"

module VagrantPlugins
  module Ctd
    module Action
      module Steps
        # The machine's own ssh key, written through ctd's exec instead of Vagrant's ssh round
        # trips (guest detection, insert_public_key, remove_public_key, reconnect: 2-4 s here):
        # the key pair is made while ctd creates and starts the instance, the public key goes
        # into the ssh user's authorized_keys (the box's insecure key taken out), the private key
        # into the machine's data directory, where Vagrant then finds it and inserts nothing.
        # Anything in the way (a VM whose guest agent does not answer yet, a remote token without
        # exec) leaves it to Vagrant's own way, as with any provider.
        module Key
          module_function

          SCRIPT = <<~'SH'
            set -e
            u=$1
            h=$(getent passwd "$u" 2>/dev/null | cut -d: -f6)
            [ -n "$h" ] || h=$(grep "^$u:" /etc/passwd | cut -d: -f6)
            [ -n "$h" ] || { echo "no user $u in the instance" >&2; exit 3; }
            g=$(id -g "$u")
            mkdir -p "$h/.ssh"
            chown "$u:$g" "$h/.ssh"
            chmod 700 "$h/.ssh"
            f="$h/.ssh/authorized_keys"
            umask 077
            { if [ -f "$f" ]; then grep -v -F -e "$3" "$f" || true; fi; printf '%s\n' "$2"; } > "$f.ctd-new"
            chown "$u:$g" "$f.ctd-new"
            mv -f "$f.ctd-new" "$f"
          SH

          # Vagrant would insert a key at this machine's first ssh (the box's insecure one in use)
          def needed?(machine)
            ssh = machine.config.ssh
            ssh.insert_key && ssh.private_key_path.nil? && ssh.password.nil? &&
              !machine.data_dir.join("private_key").file?
          end

          # the key pair, made in a thread (OpenSSL leaves Ruby's lock while it searches primes)
          def start(env)
            env[:ctd_keypair] ||= Thread.new { Vagrant::Util::Keypair.create }
          end

          # true when the machine's key is in place
          def insert(env)
            machine = env[:machine]
            return true unless needed?(machine)
            _pub, priv, openssh = start(env).value
            user = machine.config.ssh.username || machine.config.ssh.default.username || "vagrant"
            insecure = Vagrant.source_root.join("keys", "vagrant.pub").read.chomp
            result = machine.provider.client.exec(machine.id, ["sh", "-c", SCRIPT, "sh", user, openssh, insecure])
            unless result.code.zero?
              env[:ui].detail("ctd could not write the key (#{result.stderr.strip}); Vagrant inserts it over ssh")
              return false
            end
            path = machine.data_dir.join("private_key")
            File.open(path, File::WRONLY | File::CREAT | File::TRUNC, 0o600) { |f| f.write(priv) }
            env[:ui].detail("Inserted the machine's own ssh key (through ctd)")
            true
          rescue CtdError, SystemCallError, IOError => e
            env[:ui].detail("#{e.message}; Vagrant inserts the machine's key over ssh")
            false
          end
        end

        # Vagrant's WaitForCommunicator looks once a second and its ssh loop retries refused
        # connections without a pause (each asking ctd for the address); a container's sshd is up
        # about a second after its start. This polls the address's ssh port every 50 ms (the
        # instance's state once a second: one that stops is a boot error, as Vagrant says it),
        # then lets Vagrant's communicator connect once.
        class WaitForSsh < Step
          POLL = 0.05

          def call(env)
            machine = env[:machine]
            deadline = now + machine.config.vm.boot_timeout
            env[:ui].output(I18n.t("vagrant.boot_waiting"))
            # a container takes exec at once (no guest to wait for): its key goes in while sshd
            # starts; a VM's guest agent answers about when its sshd does
            keyer = Thread.new { Key.insert(env) }.tap { |t| t.report_on_exception = false } if cfg(env).type == "container"
            return unless wait_port(env, deadline)
            keyer ? keyer.value : Key.insert(env)
            left = deadline - now
            raise Vagrant::Errors::VMBootTimeout unless left.positive? && machine.communicate.wait_for_ready(left)
            env[:ui].output(I18n.t("vagrant.boot_completed"))
            @app.call(env)
          end

          def now
            Process.clock_gettime(Process::CLOCK_MONOTONIC)
          end

          # true once sshd answers its banner at the machine's ssh address (false: interrupted)
          def wait_port(env, deadline)
            machine = env[:machine]
            info = nil
            checked = -1.0
            loop do
              return false if env[:interrupted]
              raise Vagrant::Errors::VMBootTimeout if now > deadline
              if now - checked >= 1
                state = machine.state.id
                raise Vagrant::Errors::VMBootBadState, valid: "running", invalid: state unless state == :running
                info ||= machine.ssh_info
                checked = now
              end
              return true if info && sshd?(info[:host], info[:port])
              sleep POLL
            end
          end

          def sshd?(host, port)
            Socket.tcp(host, port, connect_timeout: 1) do |s|
              s.wait_readable(1) && s.read_nonblock(4, exception: false).to_s.start_with?("SSH")
            end
          rescue SystemCallError, IOError, SocketError
            false
          end
        end
      end
    end
  end
end
