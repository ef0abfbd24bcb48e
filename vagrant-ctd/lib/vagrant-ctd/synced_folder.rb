# frozen_string_literal: true

require "vagrant"

module VagrantPlugins
  module Ctd
    # Synced folders as ctd host mounts, idmapped (a host user's uid k is uid k inside, so the
    # developer's files are the vagrant user's when both are 1000). Mounts are set when the
    # instance is created; a change of synced folders needs `vagrant destroy` + `up` (or
    # ctctl set --mount). VMs and remote ctds use rsync (Vagrant's default) instead.
    class SyncedFolder < Vagrant.plugin("2", :synced_folder)
      def usable?(machine, _raise_error = false)
        return false unless machine.provider_name == :ctd
        c = machine.provider_config
        c.type == "container" && c.remote.nil? && !c.privileged
      end

      def prepare(machine, folders, _opts)
        machine.provider.pending_mounts = folders.values.map do |data|
          options = ["idmap"]
          options.unshift("ro") if data[:mount_options]&.include?("ro") || data[:readonly]
          "#{data[:hostpath]}:#{data[:guestpath]}:#{options.join(",")}"
        end
      end

      def enable(machine, folders, _opts); end

      def disable(machine, folders, _opts); end

      def cleanup(machine, _opts); end
    end
  end
end
